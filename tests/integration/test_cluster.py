"""A real two-node Ray cluster on this machine: token auth, `study submit`, trials on both nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
import yaml

from tests.conftest import BIN, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def stop_cluster(temp_dir: str) -> None:
    """Stop every process of this cluster by PID (they all carry its temp dir in their args)."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in (p.info["cmdline"] or [])):
            procs.append(p)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()


@pytest.mark.skip(
    reason="work in progress (issue 5): the job runs and trains on both nodes, but its driver "
    "then fails in Tune's ExperimentAnalysis with FileNotFoundError from os.getcwd(): the "
    "unpacked working_dir of the job disappears during the run"
)
def test_submit_runs_a_study_on_two_nodes_with_token_auth(tmp_path: Path) -> None:
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Unix socket paths are limited
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    ray = str(BIN / "ray")
    try:
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                "--num-cpus=1",
                f"--temp-dir={temp_dir}",
                "--include-dashboard=true",
                "--disable-usage-stats",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        subprocess.run(
            [ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--disable-usage-stats"],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        address = f"http://127.0.0.1:{dashboard}"
        # The Jobs API refuses a request without the cluster's token.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
        assert refused.value.code == 401

        spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
        spec["evaluations"]["inversion"] = {"enabled": False}
        spec["evaluations"]["robustness"] = {"enabled": False}
        spec["output"] = {"results_dir": str(tmp_path / "results")}
        work = tmp_path / "work"
        work.mkdir()
        (work / "smoke.yaml").write_text(yaml.safe_dump(spec))
        out = subprocess.run(
            [str(BIN / "study"), "submit", "smoke.yaml", "--address", address],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        job_id = out.stdout.split()[0]

        # Polled through the CLI: this process imported Ray before RAY_AUTH_MODE was set.
        def status() -> str:
            return subprocess.run(
                [str(BIN / "study"), "status", "smoke.yaml", "--address", address],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout

        deadline = time.monotonic() + 400
        while not any(
            f"job {job_id}: {s}" in (text := status()) for s in ("SUCCEEDED", "FAILED", "STOPPED")
        ):
            assert time.monotonic() < deadline, "the job did not finish in time"
            time.sleep(3)
        logs = subprocess.run(
            [ray, "job", "logs", "--address", address, job_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert f"job {job_id}: SUCCEEDED" in text, logs[-3000:]
        assert "2/2 trials done" in text

        trials = pd.read_parquet(tmp_path / "results" / "tables" / "trials")
        assert len(trials) == 2
        assert trials["node_id"].nunique() == 2, "both nodes should have trained a trial"
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["smoke"])
        assert (runs["tags.atsweep.role"] == "trial").sum() == 2
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
