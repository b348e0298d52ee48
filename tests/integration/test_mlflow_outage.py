"""The MLflow server (a real `mlflow server` on 127.0.0.1) stops for 20 s during a study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STUDY = str(Path(sys.executable).parent / "study")


def start_server(root: Path, port: int) -> subprocess.Popen:
    log = (root / f"server-{time.time_ns()}.log").open("w")
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, 120, proc)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_20_second_outage_loses_nothing_and_logging_catches_up(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    spec = yaml.safe_load((Path(__file__).parents[2] / "sweeps" / "smoke.yaml").read_text())
    spec["training"]["epochs"] = 4
    spec["evaluations"]["inversion"] = {"enabled": False}
    spec["output"] = {"results_dir": str(tmp_path / "results"), "tracking_uri": uri}
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    study = subprocess.Popen(
        [STUDY, "run", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ray_dir = tmp_path / "results" / "ray"
        deadline = time.monotonic() + 240
        while not list(ray_dir.glob("*/*/checkpoint_*/manifest.json")):
            assert study.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        stop_server(server)
        time.sleep(20)
        assert study.poll() is None, "the study must wait for the server, not fail"
        server = start_server(tmp_path, port)
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
