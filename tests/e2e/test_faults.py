"""Faults with real processes: a study whose driver is killed resumes when run again."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
import yaml

from tests.conftest import run_study, start_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def newest_epoch(ray_dir: Path) -> int:
    epochs = [
        json.loads(m.read_text())["epoch"] for m in ray_dir.glob("*/checkpoint_*/manifest.json")
    ]
    return max(epochs, default=-1)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (the driver and its local Ray)."""
    parent = psutil.Process(pid)
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def fault_spec(tmp_path: Path, eps: list[float]) -> Path:
    spec = {
        "name": "faults",
        "grid": {
            "sources": [{"dataset": "digits", "classes": [0, 1, 2, 3, 4]}],
            "archs": ["small_cnn"],
            "norms": ["l2"],
            "eps": eps,
            "seeds": [0],
        },
        "training": {
            "epochs": 8,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 0.003,
            "augment": "none",
            "schedule": "cosine",
            "attack": {"steps": 3},
            "eval_attack": {"steps": 3},
        },
        "evaluations": {
            "transfer": {"targets": [], "baselines": False},
            "fisher": {"enabled": False},
            "robustness": {"enabled": False},
            "inversion": {"enabled": False},
        },
        "output": {"results_dir": str(tmp_path / "results")},
    }
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_killed_driver_rerun_resumes_from_checkpoints_without_duplicates(tmp_path: Path) -> None:
    path = fault_spec(tmp_path, [0.5, 1.0])
    ray_dir = tmp_path / "results" / "ray" / "faults"
    log = (tmp_path / "first.log").open("w")
    first = start_study("run", str(path), "--no-report", cwd=tmp_path, stdout=log)
    deadline = time.monotonic() + 240
    while newest_epoch(ray_dir) < 2:
        assert first.poll() is None, "the study ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint of epoch 2 within 4 minutes"
        time.sleep(0.2)
    kill_tree(first.pid)
    log.close()
    killed_at = newest_epoch(ray_dir)
    assert killed_at < 7, "the study finished before it was killed"

    second = run_study("run", str(path), "--no-report", cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    # The killed driver's lease is taken over at once: its process on this machine is gone.
    assert "WARNING: taking over the study's lease from" in second.stdout
    assert "on this machine is gone" in second.stdout
    results = tmp_path / "results"
    trials = pd.read_parquet(results / "tables" / "trials")
    epochs = pd.read_parquet(results / "tables" / "epochs")
    assert len(trials) == 2
    # Exactly one row per epoch and trial, lost reports recovered from the checkpoints.
    assert sorted(epochs.groupby("trial_key").size().tolist()) == [8, 8]
    assert not epochs.duplicated(["trial_key", "epoch"]).any()

    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["faults"])
    trial_runs = runs[runs["tags.atsweep.role"] == "trial"]
    assert len(trial_runs) == 2 and set(trial_runs["tags.trial_key"]) == set(trials["trial_key"])
    assert "RUNNING" not in set(runs["status"])
    client = mlflow.MlflowClient()
    starts = [
        max(m.value for m in client.get_metric_history(run_id, "trial/start_epoch"))
        for run_id in trial_runs["run_id"]
    ]
    # At least one trial resumed from its checkpoint instead of starting again at epoch 0.
    assert max(starts) >= 1


def test_a_killed_trial_worker_is_retried_from_its_last_checkpoint(tmp_path: Path) -> None:
    path = fault_spec(tmp_path, [0.5])
    ray_dir = tmp_path / "results" / "ray" / "faults"
    study = start_study("run", str(path), "--no-report", cwd=tmp_path)
    deadline = time.monotonic() + 240
    while newest_epoch(ray_dir) < 2:
        assert study.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    workers = [
        p
        for p in psutil.Process(study.pid).children(recursive=True)
        if "ImplicitFunc" in " ".join(p.cmdline())
    ]
    assert workers, "no Tune trial worker found"
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    out, _ = study.communicate(timeout=600)
    assert study.returncode == 0, out[-3000:]
    results = tmp_path / "results"
    epochs = pd.read_parquet(results / "tables" / "epochs")
    assert sorted(epochs["epoch"]) == list(range(8))
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    run_id = mlflow.search_runs(
        experiment_names=["faults"], filter_string="tags.`atsweep.role` = 'trial'"
    )["run_id"].item()
    starts = [
        m.value for m in mlflow.MlflowClient().get_metric_history(run_id, "trial/start_epoch")
    ]
    assert max(starts) >= 2, f"the retried trial started again at epoch {max(starts)}"
