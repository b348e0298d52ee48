"""Helpers for the tests that drive real `study run` processes and watch them from outside
(tests/e2e/test_two_drivers.py, tests/e2e/test_signals.py); not a test module itself."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def smoke_spec(tmp_path: Path, epochs: int = 2, timeout_s: float = 120.0) -> Path:
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["training"]["epochs"] = epochs
    spec["output"] = {"results_dir": str(tmp_path / "results"), "lease_timeout_s": timeout_s}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def running_trials(results: Path) -> int:
    """Trial runs RUNNING in the study's MLflow store (0 before it exists)."""
    db = results / "mlflow.db"
    if not db.is_file():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        try:
            (n,) = con.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'atsweep.role' and t.value = 'trial' and r.status = 'RUNNING'"
            ).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return 0
    return int(n)


def wait_for(condition: object, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 300
    while not condition():  # type: ignore[operator]
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the study exited ({proc.returncode}) before {what}: {out[-3000:]}")
        assert time.monotonic() < deadline, f"not {what} within 5 minutes"
        time.sleep(0.2)
