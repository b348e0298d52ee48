"""One driver at a time, with real `study run` processes: two started together (one runs, one
refuses), and a frozen holder taken over after the timeout that then stops writing."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from study.lease import read_lease
from tests.conftest import run_study, start_study
from tests.drivers import running_trials, smoke_spec, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def assert_each_row_and_run_once(results: Path) -> None:
    tables = results / "tables"
    assert len(pd.read_parquet(tables / "trials")) == 2
    for name, key in [("epochs", ["trial_key", "epoch"]), ("transfer", ["eval_key"])]:
        df = pd.read_parquet(tables / name)
        assert not df.duplicated(key).any(), name
    for name in ("transfer", "fisher", "robustness", "inversion"):
        df = pd.read_parquet(tables / name)
        assert len(df) == df["eval_key"].nunique() > 0, name
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    roles = runs["tags.atsweep.role"].value_counts().to_dict()
    assert roles == {"study": 1, "trial": 2, "evaluation": 13}, roles
    assert "RUNNING" not in set(runs["status"])


def test_two_drivers_started_together_one_runs_and_one_refuses(tmp_path: Path) -> None:
    path = smoke_spec(tmp_path)
    # `study status --watch`, started with them, follows the study until its driver is done.
    watcher = start_study("status", str(path), "--watch", "--interval", "1", cwd=tmp_path)
    drivers = [start_study("run", str(path), "--no-report", cwd=tmp_path) for _ in range(2)]
    outs = [d.communicate(timeout=600)[0] for d in drivers]
    watched = watcher.communicate(timeout=120)[0]
    assert watcher.returncode == 0, watched[-3000:]
    views = watched.split("--- ")[1:]
    assert any("lease: held by" in view for view in views), watched[-3000:]
    assert "2/2 trials done" in views[-1] and "lease: free" in views[-1], views[-1]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], outs
    refused = outs[[d.returncode for d in drivers].index(2)]
    line = refused.strip().splitlines()
    assert len(line) == 1 and "is being run by" in line[0] and "since" in line[0], refused
    assert_each_row_and_run_once(tmp_path / "results")
    lease = read_lease(str(tmp_path / "results"))
    assert lease is not None and lease.released_at is not None


def test_a_frozen_holder_is_taken_over_after_the_timeout_and_stops_writing(
    tmp_path: Path,
) -> None:
    path = smoke_spec(tmp_path, epochs=6, timeout_s=4.0)
    results = tmp_path / "results"
    frozen = start_study("run", str(path), "--no-report", cwd=tmp_path)
    try:
        wait_for(lambda: running_trials(results) > 0, "a trial was running", frozen)
        os.kill(frozen.pid, signal.SIGSTOP)  # alive, but its heartbeat stops
        wait_for(
            lambda: (
                (r := read_lease(str(results))) is not None and time.time() - r.heartbeat_at > 4
            ),
            "the lease went stale",
        )
        # Two local Ray clusters on one machine need a temporary folder each. With both in the
        # shared /tmp/ray the taker once hung for the whole 10-minute limit after taking the
        # lease and before its Tune experiment or its MLflow writes began, that is in ray.init,
        # beside the frozen driver's cluster (whose processes run on; only its driver stops).
        ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths
        env = {**os.environ, "RAY_TMPDIR": ray_tmp}
        try:
            taker = run_study("run", str(path), "--no-report", cwd=tmp_path, env=env)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        assert taker.returncode == 0, taker.stdout[-3000:] + taker.stderr[-3000:]
        assert "WARNING: taking over the study's lease from" in taker.stdout
        assert "no heartbeat for" in taker.stdout
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    out, _ = frozen.communicate(timeout=300)
    # Woken up, it finds the lease taken over before its next write, and stops.
    assert frozen.returncode == 2, out[-3000:]
    assert "was taken over by" in out and "nothing more is written" in out
    assert_each_row_and_run_once(results)
