"""A real two-node Ray cluster on this machine: token auth, `study submit`, trials on both nodes."""

from __future__ import annotations

import json
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

from tests.conftest import BIN, free_port, run_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def stop_cluster(temp_dir: str) -> None:
    """Stop every process of one node by PID: those with its temp dir in their arguments and
    their descendants (the agents rename themselves, e.g. ray::DashboardAgent)."""
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in (p.info["cmdline"] or [])):
            procs[p.pid] = p
            try:
                procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(list(procs.values()), timeout=20)
    for p in alive:
        p.kill()


def test_submit_runs_a_study_on_two_nodes_with_token_auth(tmp_path: Path) -> None:
    # One temp dir per node, as on separate machines: nodes sharing one would share (and
    # garbage-collect) each other's unpacked job working_dir. Short: socket paths are limited.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    worker_temp_dir = tempfile.mkdtemp(prefix="rw", dir="/tmp")
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
            [
                ray,
                "start",
                f"--address=127.0.0.1:{port}",
                "--num-cpus=1",
                f"--temp-dir={worker_temp_dir}",
                "--disable-usage-stats",
            ],
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
        # Each trial in a fresh worker, and no baseline task ahead of them: the two trials'
        # placement groups take one node each, whichever trial finishes first.
        spec["evaluations"]["transfer"]["baselines"] = False
        spec["evaluations"]["fisher"]["random_init"] = False
        spec["resources"] = {"reuse_actors": False}
        spec["output"] = {"results_dir": str(tmp_path / "results")}
        work = tmp_path / "work"
        work.mkdir()
        (work / "smoke.yaml").write_text(yaml.safe_dump(spec))
        out = run_study("submit", "smoke.yaml", "--address", address, cwd=work, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        job_id = out.stdout.split()[0]

        # Polled over the REST API with the token (this process imported Ray before
        # RAY_AUTH_MODE was set, so Ray's own client here would not send it).
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(
            f"{address}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
        )
        # A bound for a failure, not a timing: the job takes ~60 s on an idle 2-core machine
        # and several times that beside other work.
        deadline = time.monotonic() + 900
        while (state := json.load(urllib.request.urlopen(request, timeout=30))["status"]) not in (
            "SUCCEEDED",
            "FAILED",
            "STOPPED",
        ):
            assert time.monotonic() < deadline, "the job did not finish in time"
            time.sleep(2)
        text = run_study("status", "smoke.yaml", "--address", address, cwd=work, env=env).stdout
        logs = subprocess.run(
            [ray, "job", "logs", "--address", address, job_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert state == "SUCCEEDED", logs[-3000:]
        assert f"job {job_id}: SUCCEEDED" in text
        assert "2/2 trials done" in text
        # The job's driver held the study's lease, as Ray job JOB_ID, and released it.
        from study.lease import read_lease

        lease = read_lease(str(tmp_path / "results"))
        assert lease is not None and lease.ray_job == job_id and lease.released_at is not None
        assert f"(Ray job {job_id})" in text and "lease: free" in text

        trials = pd.read_parquet(tmp_path / "results" / "tables" / "trials")
        assert len(trials) == 2
        assert trials["node_id"].nunique() == 2, "both nodes should have trained a trial"
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["smoke"])
        assert runs["tags.atsweep.role"].value_counts().to_dict() == {
            "study": 1,
            "trial": 2,
            "evaluation": 4,  # a transfer probe and a Fisher evaluation per trial
        }
        assert set(runs["status"]) == {"FINISHED"}
        results = tmp_path / "results" / "tables"
        assert len(pd.read_parquet(results / "epochs")) == 4
        assert len(pd.read_parquet(results / "transfer")) == 2
        assert len(pd.read_parquet(results / "fisher")) == 2
    finally:
        for d in (worker_temp_dir, temp_dir):
            stop_cluster(d)
        for d in (worker_temp_dir, temp_dir):
            shutil.rmtree(d, ignore_errors=True)
