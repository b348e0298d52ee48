"""run_study from Python, as a notebook calls it: a real study on a local Ray, its summary and
tables returned, and a second call that finds everything cached."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.notebook import run_study
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def own_environment() -> Iterator[None]:
    """The study sets Tune's environment for its driver (study.launcher.configure_tune_environment,
    as `study run` does): this process's later tests get their own back."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.usefixtures("own_environment")
def test_run_study_returns_the_summary_and_tables_and_resumes(tmp_path: Path) -> None:
    overrides = {
        "grid.eps": [0.5],
        "training.epochs": 1,
        "evaluations.transfer.targets": [],
        "evaluations.fisher.enabled": False,
        "evaluations.inversion.enabled": False,
        "output.results_dir": str(tmp_path / "results"),
    }
    said: list[str] = []
    first = run_study(ROOT / "sweeps" / "smoke.yaml", overrides, printer=said.append)
    assert (first.summary.trials_done, first.summary.trials_failed) == (1, 0)
    assert first.results_dir == str(tmp_path / "results")
    assert len(first.tables["trials"]) == 1 and len(first.tables["robustness"]) >= 1
    trained = first.tradeoff[first.tradeoff["row_kind"] == "trained"]
    assert len(trained) == 1 and trained["eps"].item() == 0.5
    assert any(line.startswith("MLflow: ") for line in said)
    again = run_study(ROOT / "sweeps" / "smoke.yaml", overrides, printer=said.append)
    assert (again.summary.trials_done, again.summary.trials_cached) == (0, 1)
    assert again.summary.evals_done == 0
    assert len(again.tables["trials"]) == 1
