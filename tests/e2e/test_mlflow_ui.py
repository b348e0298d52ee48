"""The MLflow UI of a study, as `study run` announces it when it starts: the printed command
serves it (the venv's own mlflow) and the printed address opens, in a real headless Chromium,
on the runs table, where the study's run holds its trials."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from tests.browser import evaluate_url, find_chromium
from tests.conftest import BIN, ROOT, free_port, stop_server, wait_for_port

pytestmark = pytest.mark.e2e

# MLflow's runs table: the expander of a parent run (its run-name cell's button).
EXPANDER = "button[data-component-id*='runnamecellrenderer']"


def announced(stdout: str) -> tuple[int, str, str]:
    """(line index of 'MLflow: ...', the UI command, the runs table's address) as printed first."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("MLflow: "))
    command = lines[start + 1].split("open the UI: ", 1)[1]
    url = lines[start + 2].split("the study's runs: ", 1)[1]
    return start, command, url


def test_study_run_announces_the_ui_before_it_trains(smoke) -> None:  # type: ignore[no-untyped-def]
    _, results, first = smoke
    assert first.returncode == 0, first.stderr[-3000:]
    start, command, url = announced(first.stdout)
    lines = first.stdout.splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("study smoke: "))
    assert start < plan, "the UI lines come before the study's plan and its trials"
    assert lines[start] == f"MLflow: sqlite:///{results / 'mlflow.db'} (experiment 'smoke', id 1)"
    argv = shlex.split(command)
    assert argv[:2] == [str(BIN / "mlflow"), "ui"]  # the venv's, not whatever is on PATH
    assert argv[2:4] == ["--backend-store-uri", f"sqlite:///{results / 'mlflow.db'}"]
    assert url == "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"
    # ... and again when it ends, after the tables.
    assert first.stdout.count(command) == 2


@pytest.mark.skipif(find_chromium() is None, reason="needs chromium (.ci/run installs it)")
def test_the_announced_ui_opens_on_the_runs_table_with_the_trials_nested(smoke) -> None:  # type: ignore[no-untyped-def]
    _, _, first = smoke
    _, command, url = announced(first.stdout)
    argv = shlex.split(command)
    port = free_port()  # the printed command with a free port instead of 5000
    argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_port(port, 120, proc)
        shot = ROOT / "test-artifacts" / "mlflow-runs.png"
        # Collapsed, the table lists the study's run alone; its expander shows the trials.
        until = (
            "(() => { const rows = document.body.innerText;"
            f" const b = document.querySelector({EXPANDER!r});"
            " if (b && rows.includes('smoke') && !window.__opened) {"
            " b.click(); window.__opened = 1; }"
            " return rows.includes('eps=0.5 seed=0'); })()"
        )
        href, text = evaluate_url(
            url.replace(":5000/", f":{port}/"),
            ["location.href", "document.body.innerText"],
            screenshot=shot,
            until=until,
        )
    finally:
        stop_server(proc)
    assert "/#/experiments/1/runs" in href and "workflowType=machine_learning" in href
    for trial in ("small_cnn l2 pgd3 eps=0 seed=0", "small_cnn l2 pgd3 eps=0.5 seed=0"):
        assert trial in text
    assert "Traces 0" not in text and "No data available" not in text
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_the_study_and_its_trials_record_their_provenance(smoke) -> None:  # type: ignore[no-untyped-def]
    """The project's commit and dirty flag, the software and the machine: in study.json, on the
    study's run, and on each trial's run (with the host of the Ray node that trained it)."""
    import json
    import socket

    import mlflow
    import torch

    from trainables import training

    _, results, first = smoke
    assert first.returncode == 0
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    recorded = json.loads((results / "study.json").read_text())["provenance"]
    assert recorded["git_commit"] == head and recorded["git_dirty"] in ("true", "false")
    assert recorded["torch"] == torch.__version__ and recorded["host"] == socket.gethostname()
    assert recorded["gpu"] == (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    )
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs(["1"], max_results=100)
    study = [r for r in runs if r.data.tags.get("atsweep.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("atsweep.role") == "trial"]
    assert len(study) == 1 and len(trials) >= 2
    assert study[0].data.tags["atsweep.git_commit"] == head
    assert study[0].data.tags["atsweep.cuda"] == recorded["cuda"]
    for trial in trials:
        tags = trial.data.tags
        assert tags["atsweep.git_commit"] == head and tags["atsweep.torch"] == torch.__version__
        assert tags["atsweep.host"] == socket.gethostname()
        native = torch.cuda.is_available() or training.cpu_has_native_bf16()
        assert tags["atsweep.precision"] == ("bf16" if native else "fp32")
        assert torch.cuda.is_available() or tags["atsweep.gpu"] == "none"
