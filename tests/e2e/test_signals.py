"""SIGINT and SIGTERM on `study run` (real signals, to the driver's process group as a terminal
or a scheduler sends them): exit 130 / 143, one line saying what is unfinished, its runs KILLED,
buffered rows written, the lease free; the same command then finishes the study."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from study.lease import read_lease
from tests.conftest import run_study, start_study
from tests.drivers import running_trials, smoke_spec, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def interrupt(tmp_path: Path, signum: int) -> tuple[int, str]:
    """Start the smoke study, send signum once a trial is training; its exit status and output."""
    path = smoke_spec(tmp_path, epochs=10)
    study = start_study("run", str(path), "--no-report", cwd=tmp_path)
    wait_for(lambda: running_trials(tmp_path / "results") > 0, "a trial was training", study)
    os.killpg(study.pid, signum)
    out, _ = study.communicate(timeout=300)
    return study.returncode, out


def runs_by_status(results: Path) -> dict[tuple[str, str], int]:
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    return runs.groupby(["tags.atsweep.role", "status"]).size().to_dict()


def assert_stopped(results: Path) -> None:
    """The study's run and every trial run it had started ended KILLED; nothing RUNNING."""
    states = runs_by_status(results)
    assert states[("study", "KILLED")] == 1 and states.get(("trial", "KILLED"), 0) >= 1, states
    assert not any(status == "RUNNING" for _, status in states), states


def test_sigint_stops_the_study_honestly_and_the_same_command_resumes_it(tmp_path: Path) -> None:
    code, out = interrupt(tmp_path, signal.SIGINT)
    assert code == 130, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("study: interrupted by SIGINT: 2 trials and ") and "resumes it" in last
    assert "evaluations unfinished; `study run " in last
    assert "done in" not in out  # it does not say it finished
    results = tmp_path / "results"
    assert_stopped(results)
    lease = read_lease(str(results))
    assert lease is not None and lease.released_at is not None

    again = run_study("run", str(tmp_path / "smoke.yaml"), "--no-report", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "trials 2 run, 0 cached" in again.stdout
    epochs = pd.read_parquet(results / "tables" / "epochs")
    assert sorted(epochs.groupby("trial_key").size()) == [10, 10]
    assert not epochs.duplicated(["trial_key", "epoch"]).any()
    states = runs_by_status(results)
    assert states[("study", "FINISHED")] == 1 and states[("trial", "FINISHED")] == 2, states
    assert states[("evaluation", "FINISHED")] == 13, states


def test_sigterm_stops_the_study_with_143(tmp_path: Path) -> None:
    code, out = interrupt(tmp_path, signal.SIGTERM)
    assert code == 143, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("study: interrupted by SIGTERM: ")
    assert_stopped(tmp_path / "results")
    lease = read_lease(str(tmp_path / "results"))
    assert lease is not None and lease.released_at is not None
