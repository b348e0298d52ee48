"""Two real writer processes append to one parquet table; one is SIGKILLed mid-write."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from study.sinks.parquet import ParquetSink, part_files, read_table

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="reads a writer's open files in /proc"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
TABLE = "trials"
ROWS = 200  # rows per batch; one batch is one part file
PAYLOAD = 32_000  # hex characters per row: ~6 MB a part, so a write takes tens of ms
SURVIVOR_BATCHES = 14
MAX_VICTIMS = 5  # writers killed until one is caught with its temporary open

# Each batch is one ParquetSink.append (one part); "committed B" is printed only after it returns.
WRITER = """
import hashlib, os, sys, time
from pathlib import Path
from study.sinks.parquet import ParquetSink

tables, name, batches, rows, size, pause = sys.argv[1:7]
sink = ParquetSink(Path(tables))
for b in range(int(batches)):
    batch = []
    for i in range(int(rows)):
        payload = os.urandom(int(size) // 2).hex()
        batch.append({
            "trial_key": f"{name}-b{b:04d}-r{i:04d}",
            "study": name,
            "epochs": b,
            "seed": i,
            "config_json": payload,
            "checkpoint_path": hashlib.sha256(payload.encode()).hexdigest(),
        })
    assert sink.append("trials", batch) == int(rows)
    print(f"committed {b}", flush=True)
    time.sleep(float(pause))
print("finished", flush=True)
"""


class Writer:
    """A writer process and the batches it has reported committed (read by a thread)."""

    def __init__(self, tables: Path, name: str, batches: int, pause: float) -> None:
        self.name = name
        self.committed = 0
        self.finished = False
        args = [str(ROWS), str(PAYLOAD), str(pause)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tables), name, str(batches), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("committed "):
                assert int(line.split()[1]) == self.committed
                self.committed += 1
            elif line.strip() == "finished":
                self.finished = True

    def open_temporary(self, folder: Path) -> Path | None:
        """The hidden temporary part this writer has open right now, if any."""
        fd_dir = f"/proc/{self.proc.pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            return None
        for fd in fds:
            try:
                target = Path(os.readlink(f"{fd_dir}/{fd}"))
            except OSError:
                continue
            if target.parent == folder and target.name.endswith(".tmp"):
                return target
        return None

    def join(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=timeout)
        return rc


def batches_seen(df: pd.DataFrame) -> dict[str, list[int]]:
    """Each writer's visible batches, asserting every one has all its rows and none twice."""
    assert not df["trial_key"].duplicated().any(), "a row is visible twice"
    counts = Counter(zip(df["study"], df["epochs"], strict=True))
    partial = {key: n for key, n in counts.items() if n != ROWS}
    assert not partial, f"batches partially visible: {partial}"
    seen: dict[str, list[int]] = {}
    for name, batch in sorted(counts):
        seen.setdefault(name, []).append(int(batch))
    return seen


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    """The writers a test starts; any still running at the end (a failed test) is killed."""
    started: list[Writer] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=10)


def read_both(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table through read_table, then through pandas: parts are only ever added, so the
    later pandas read holds every row the first one did."""
    arrow = read_table(folder, TABLE).to_pandas()
    pandas = pd.read_parquet(folder)
    assert list(pandas.columns) == list(arrow.columns)
    assert set(arrow["trial_key"]) <= set(pandas["trial_key"]), "pandas lost rows"
    return arrow, pandas


def test_a_writer_killed_mid_write_leaves_readers_only_complete_parts(
    tmp_path: Path, writers: list[Writer]
) -> None:
    tables = tmp_path / "tables"
    folder = tables / TABLE
    ParquetSink(tables)  # every table folder exists (an empty part each) before the writers
    survivor = Writer(tables, "survivor", SURVIVOR_BATCHES, pause=0.03)
    victims = [Writer(tables, "victim0", 100_000, pause=0.0)]
    writers += [survivor, *victims]

    # A reader in this process reads all the while: every read succeeds, every visible batch is
    # whole, each writer's visible batches are a prefix, and none reported committed is missing.
    stop = threading.Event()
    reads: list[int] = []
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                reported = {w.name: w.committed for w in list(writers)}
                for df in read_both(folder):
                    seen = batches_seen(df)
                    for name, before in reported.items():
                        got = seen.get(name, [])
                        assert got == list(range(len(got))), f"{name}: batches {got}"
                        assert len(got) >= before, f"{name}: a reported batch is missing"
                reads.append(len(df))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()

    # Kill a victim once it has committed two batches and has its next temporary open; if the
    # kill lands just after the rename (no temporary left), start another victim and try again.
    killed: dict[str, tuple[int, Path]] = {}
    leftover: list[Path] = []
    deadline = time.monotonic() + 30

    def still_waiting(what: str) -> None:
        assert not failures, f"a concurrent read failed: {failures[0]!r}"
        assert time.monotonic() < deadline, what

    try:
        while not leftover and len(killed) < MAX_VICTIMS:
            victim = victims[-1]
            while victim.committed < 2:
                assert victim.proc.poll() is None, "a victim writer died on its own"
                still_waiting("the victim writer is too slow")
                time.sleep(0.005)
            while (tmp := victim.open_temporary(folder)) is None:
                still_waiting("never caught the victim inside a write")
                time.sleep(0.0005)
            os.kill(victim.proc.pid, signal.SIGKILL)
            assert victim.join(timeout=10) == -signal.SIGKILL
            killed[victim.name] = (victim.committed, tmp)
            if tmp.exists():
                leftover.append(tmp)
            elif len(killed) < MAX_VICTIMS:
                victims.append(Writer(tables, f"victim{len(killed)}", 100_000, pause=0.0))
                writers.append(victims[-1])

        assert survivor.join(timeout=60) == 0 and survivor.finished
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, f"a concurrent read failed: {failures[0]!r}"
    assert sum(n > 0 for n in reads) >= 3, f"too few reads saw rows while writing: {reads}"
    assert leftover, f"no kill of {len(killed)} landed inside a write"

    # Afterwards: both readers agree, the survivor's rows are all there once, each victim has
    # exactly the batches it reported (or one more, renamed just before the kill), all intact.
    df, pandas = read_both(folder)
    assert sorted(pandas["trial_key"]) == sorted(df["trial_key"])
    seen = batches_seen(df)
    assert seen["survivor"] == list(range(SURVIVOR_BATCHES))
    for name, (reported, tmp) in killed.items():
        got = seen.get(name, [])
        assert got == list(range(len(got)))
        assert len(got) in (reported, reported + 1), f"{name}: {len(got)} vs {reported} reported"
        if tmp in leftover:  # killed inside the write: that batch is absent, no more and no less
            assert len(got) == reported, f"{name}: {len(got)} vs {reported} reported"
    assert set(seen) == {"survivor", *killed}
    assert len(df) == ROWS * sum(len(b) for b in seen.values())
    assert all(
        hashlib.sha256(p.encode()).hexdigest() == h
        for p, h in zip(df["config_json"], df["checkpoint_path"], strict=True)
    ), "a row's payload is corrupt"

    # What the kill left behind is hidden, never listed as a part, and none of its rows are read.
    others = sorted(set(folder.iterdir()) - {Path(p) for p in part_files(folder)})
    assert others and set(others) >= set(leftover)
    for path in others:
        assert path.name.startswith(".") and path.name.endswith(".tmp"), path.name
    for path in leftover:
        try:
            orphan = pq.read_table(path).column("trial_key").to_pylist()
        except Exception:  # truncated: no footer yet
            continue
        assert not set(orphan) & set(df["trial_key"]), "a temporary's rows were read"
