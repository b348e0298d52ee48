"""Shared fixtures: a tiny in-memory reporter, small configs, and real servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trainables.config import (
    ArchRef,
    AttackConfig,
    DataConfig,
    DatasetRef,
    OptimConfig,
    TrainConfig,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Two cores: keep each test process to one torch thread so Ray workers are not starved.
os.environ.setdefault("OMP_NUM_THREADS", "1")


class ListReporter:
    """The in-memory Reporter: keeps each epoch's metrics and a copy of its checkpoint."""

    def __init__(self, keep_dir: Path | None = None) -> None:
        self.metrics: list[dict[str, float]] = []
        self.checkpoints: list[Path] = []
        self.keep_dir = keep_dir

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import shutil

        self.metrics.append(dict(metrics))
        if checkpoint_dir is not None and self.keep_dir is not None:
            dest = self.keep_dir / f"epoch{int(metrics['epoch'])}"
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoints.append(dest)


@pytest.fixture
def reporter(tmp_path: Path) -> ListReporter:
    return ListReporter(tmp_path / "kept")


def make_digits_config(
    classes: tuple[int, ...] = (0, 1, 2),
    *,
    norm: str = "l2",
    eps: float = 0.0,
    seed: int = 0,
    epochs: int = 3,
    batch_size: int = 32,
    optimizer: str = "adam",
    lr: float = 5e-3,
    attack: AttackConfig | None = None,
    eval_attack: AttackConfig | None = None,
    data: DataConfig | None = None,
) -> TrainConfig:
    """The small trial the unit tests train: small_cnn at width 0.5 on a class subset of digits.

    attack, eval_attack and data left out keep TrainConfig's defaults. A plain function too, for
    module-level constants and module-scoped fixtures (the digits_config fixture returns it).
    """
    extra = {"attack": attack, "eval_attack": eval_attack, "data": data}
    return TrainConfig(
        source=DatasetRef("digits", classes),
        arch=ArchRef("small_cnn", 0.5),
        norm=norm,
        eps=eps,
        seed=seed,
        optim=OptimConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr),
        **{k: v for k, v in extra.items() if v is not None},
    )


@pytest.fixture(scope="session")
def digits_config() -> Callable[..., TrainConfig]:
    """A factory of small digits TrainConfigs: digits_config(classes, eps=..., epochs=...)."""
    return make_digits_config


def write_smoke_spec(folder: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """sweeps/smoke.yaml with its results in folder/results (and edit applied to the raw YAML),
    written to folder/smoke.yaml and loaded: the SweepSpec."""
    import yaml

    from study.spec import load_spec

    raw = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    raw["output"] = {"results_dir": str(folder / "results")}
    if edit is not None:
        edit(raw)
    (folder / "smoke.yaml").write_text(yaml.safe_dump(raw))
    return load_spec(folder / "smoke.yaml")


@pytest.fixture
def smoke_spec(tmp_path: Path) -> Any:
    """The smoke study's spec, its results in tmp_path (nothing run)."""
    return write_smoke_spec(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port with a SQLite store in root, once it listens."""
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
    """Stop a server started in its own session, by its PID (SIGTERM, then SIGKILL)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (SQLite store), stopped by its PID."""
    port = free_port()
    proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def run_study(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `study` command of this venv, run to completion."""
    return subprocess.run(
        [str(BIN / "study"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def start_study(
    *args: str, cwd: Path, stdout: Any = subprocess.PIPE, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """The `study` command of this venv, started in its own session (to be killed by PID)."""
    return subprocess.Popen(
        [str(BIN / "study"), *args],
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="session")
def smoke(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """sweeps/smoke.yaml run once by `study run` (spec path, results folder, the run).
    Tests that extend it run in tests/e2e/test_cli.py, before the report tests read it."""
    import yaml

    tmp = tmp_path_factory.mktemp("smoke")
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["output"] = {"results_dir": str(tmp / "results")}
    path = tmp / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, tmp / "results", run_study("run", str(path), cwd=tmp)


@pytest.fixture(scope="session")
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """sweeps/demo.yaml, exactly as `make demo` runs it, into a temporary results folder (spec
    path, results folder, the run): about two minutes on two cores."""
    import yaml

    tmp = tmp_path_factory.mktemp("demo")
    spec = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    spec["output"] = {**spec["output"], "results_dir": str(tmp / "results")}
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, tmp / "results", run_study("run", str(path), cwd=tmp)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real S3 endpoint on 127.0.0.1 (moto's server) with a bucket `results`; yields the
    environment that points AWS clients (pyarrow, boto3, MLflow) at it. Stopped by its PID."""
    port = free_port()
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        wait_for_port(port, 60, proc)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="results")
        yield env
    finally:
        stop_server(proc)


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's AWS clients pointed at the S3 server, for one test."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A real local Ray (2 CPUs) shared by the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()
