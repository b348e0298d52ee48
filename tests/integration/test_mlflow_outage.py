"""The MLflow server (a real `mlflow server` on 127.0.0.1) stops for 20 s during a study."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tests.conftest import free_port, start_mlflow_server, start_study, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_20_second_outage_loses_nothing_and_logging_catches_up(tmp_path: Path) -> None:
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    spec = yaml.safe_load((Path(__file__).parents[2] / "sweeps" / "smoke.yaml").read_text())
    spec["training"]["epochs"] = 4
    spec["evaluations"]["inversion"] = {"enabled": False}
    spec["evaluations"]["fisher"]["random_init"] = False
    spec["output"] = {"results_dir": str(tmp_path / "results"), "tracking_uri": uri}
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    study = start_study("run", str(path), "--no-report", cwd=tmp_path)
    try:
        ray_dir = tmp_path / "results" / "ray"
        deadline = time.monotonic() + 240
        while not list(ray_dir.glob("*/*/checkpoint_*/manifest.json")):
            if study.poll() is not None:
                pytest.fail(
                    f"the study exited ({study.returncode}) before its first checkpoint:\n"
                    + study.communicate()[0][-4000:]
                )
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        stop_server(server)
        time.sleep(20)
        assert study.poll() is None, "the study must wait for the server, not fail"
        server = start_mlflow_server(tmp_path, port)
        out, _ = study.communicate(timeout=600)
        assert study.returncode == 0, out[-3000:]
        assert "MLflow unreachable" in out
        results = tmp_path / "results" / "tables"
        assert len(pd.read_parquet(results / "trials")) == 2
        assert len(pd.read_parquet(results / "epochs")) == 2 * 4
        assert len(pd.read_parquet(results / "fisher")) == 2
        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=["smoke"])
        assert "RUNNING" not in set(runs["status"])
        trials = runs[runs["tags.atsweep.role"] == "trial"]
        assert len(trials) == 2
        client = mlflow.MlflowClient()
        for run_id in trials["run_id"]:
            steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
            assert steps == [0, 1, 2, 3]
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
        stop_server(server)
