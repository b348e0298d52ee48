"""`study status`: the grid's progress from the tables, the runs' states from MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.recorder import Recorder
from study.sinks.parquet import ParquetSink
from study.spec import SweepSpec
from study.status import format_status, study_status
from trainables import storage

pytestmark = pytest.mark.unit


@pytest.fixture
def spec(smoke_spec: SweepSpec) -> SweepSpec:
    return smoke_spec


def test_a_study_never_run_has_nothing_done_and_no_mlflow_store_is_created(
    spec: SweepSpec,
) -> None:
    status = study_status(spec)
    assert (status.trials_done, status.trials_total) == (0, 2)
    assert set(status.rows) >= {"trials", "epochs", "transfer", "fisher", "robustness"}
    assert all(n == 0 for n in status.rows.values())
    assert status.trial_runs == {} and status.mlflow_error is None
    assert not Path(spec.results_dir(), "mlflow.db").exists()
    assert format_status(status).splitlines()[0] == "study smoke: 0/2 trials done"


def test_rows_in_the_tables_and_runs_in_mlflow_are_counted(spec: SweepSpec) -> None:
    first, second = spec.expand()
    sink = ParquetSink(storage.join(spec.results_dir(), "tables"))
    other = {"trial_key": "not-in-this-grid"}  # a row of another grid does not count as done
    sink.append("trials", [{"trial_key": first.key}, other])
    sink.append("transfer", [{"eval_key": "a"}, {"eval_key": "b"}])
    sink.append("fisher", [{"eval_key": "c"}])
    recorder = Recorder(spec, lambda _: None)
    recorder.open_study(None)
    recorder.trial_run(first)  # left RUNNING
    recorder.record_trial_failure(second, "diverged")
    status = study_status(spec)
    assert (status.trials_done, status.rows["trials"], status.rows["transfer"]) == (1, 2, 2)
    assert status.trial_runs == {"RUNNING": 1, "FAILED": 1}
    text = format_status(status)
    assert "study smoke: 1/2 trials done" in text
    assert "trials running 1, failed 1, killed 0 (MLflow)" in text
    assert "evaluations done 3, running 0, failed 0" in text
    assert "  transfer: 2 rows" in text.splitlines()
