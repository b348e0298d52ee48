"""`study run` on a terminal: a real run in a pseudo-terminal, read by a terminal emulator (pyte)
as a user would see it, with a screenshot of a frame in headless Chromium."""

from __future__ import annotations

import fcntl
import html
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyte
import pytest
import yaml

from tests.browser import evaluate_page, find_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
COLS, ROWS = 150, 50
# rich redraws its live panel from here: the cursor back to the line's start, the line erased.
REDRAW = b"\r\x1b[2K"


def run_in_terminal(args: list[str], cwd: Path) -> tuple[int, bytes]:
    """A command on a pseudo-terminal of COLS x ROWS; its exit code and all it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLS), "LINES": str(ROWS)}
    proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=600), bytes(out)


def frames(output: bytes) -> tuple[list[list[str]], list[str]]:
    """The screen at the end of each live frame (before each redraw begins), and everything
    that scrolled past or stayed on the screen at the end."""
    screen = pyte.HistoryScreen(COLS, ROWS, history=5000)
    stream = pyte.ByteStream(screen)
    shown: list[list[str]] = []
    for i, piece in enumerate(output.split(REDRAW)):
        if i:
            shown.append([line.rstrip() for line in screen.display])
            stream.feed(REDRAW)
        stream.feed(piece)
    scrolled = ["".join(row[x].data for x in range(COLS)).rstrip() for row in screen.history.top]
    final = [line.rstrip() for line in screen.display]
    return shown, [line for line in scrolled + final if line]


def screenshot(lines: list[str], path: Path) -> None:
    text = html.escape("\n".join(lines))
    page = path.with_suffix(".html")
    page.write_text(
        "<!doctype html><meta charset=utf-8><body style='margin:0;background:#1e1e1e'>"
        "<pre style='margin:0;padding:12px;color:#e0e0e0;font:13px monospace;width:max-content'>"
        f"{text}</pre>"
    )
    evaluate_page(page, ["document.body.scrollWidth"], screenshot=path)


def test_the_live_panel_shows_running_trials_epochs_and_the_time_left(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["training"]["epochs"] = 4
    spec["output"] = {"results_dir": str(tmp_path / "results")}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    study = str(Path(sys.executable).with_name("study"))
    code, output = run_in_terminal([study, "run", str(path), "--no-report"], tmp_path)
    shown, lines = frames(output)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]

    # A frame mid-run: a trial between its epochs, with its metrics and the estimate.
    row = re.compile(r"^digits-c01234 small_cnn l2 pgd3 eps=0\.5 seed=0 +[123]/4( +\d\.\d{3}){4}")
    mid = [
        f
        for f in shown
        if any(row.match(line) for line in f) and any("ETA ~" in line for line in f)
    ]
    assert mid, "no frame showed a running trial between its epochs"
    frame = mid[0]
    assert any(
        re.match(r"study smoke +\d:\d\d:\d\d elapsed +ETA ~\d:\d\d:\d\d", ln) for ln in frame
    )
    assert any(
        re.match(r"trials [01]/2 done · [12] running · [01] queued · 0 failed", ln) for ln in frame
    )
    assert any(re.match(r"evaluations \d+ done · \d+ queued · 0 failed", ln) for ln in frame)
    assert any(ln.startswith("running trial") and "s/epoch" in ln for ln in frame)

    # The lines printed meanwhile went above the panel, whole and once each; its last frame
    # stays, above the closing table; Tune prints nothing of its own.
    for trial in ("[1/2] trial digits-c01234", "[2/2] trial digits-c01234"):
        assert sum(line.startswith(trial) for line in lines) == 1, text[-3000:]
    evals = [line for line in lines if line.startswith("  eval  ")]
    assert len(evals) == 13 and len(set(evals)) == 13, evals
    last = lines.index("trials 2/2 done · 0 running · 0 queued · 0 failed")
    assert lines[last - 1].startswith("study smoke") and lines[last - 1].endswith("nothing left")
    assert lines[last + 1] == "evaluations 13 done · 0 queued · 0 failed"
    assert any(line.startswith("done in ") for line in lines[last:])
    assert "Configuration for experiment" not in text and "ETA" not in "".join(lines[last + 2 :])

    if find_chromium() is not None:  # the screenshot the closing note points at
        shot = ROOT / "test-artifacts" / "progress-terminal.png"
        shot.parent.mkdir(exist_ok=True)
        screenshot([line for line in frame if line], shot)
        assert shot.stat().st_size > 10_000
