"""The recorder: runs, rows and study.json of a study, written once, with failures and retries.

A real MLflow store (SQLite in tmp_path) and real parquet tables; no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from study.plan import describe_trial, plan_trial_evaluations
from study.queue import Finished, PendingEval
from study.recorder import Recorder
from study.sinks.mlflow import ERROR_TAG, EVAL_KEY_TAG, KEY_TAG, TRIAL_KEY_TAG
from study.sinks.parquet import part_files, read_table
from study.spec import SweepSpec
from trainables import storage
from trainables.config import LoadRequest

pytestmark = pytest.mark.unit

PROBE_RESULT = {
    "test_acc": 0.8,
    "train_acc": 0.9,
    "val_acc": 0.85,
    "c": 1.0,
    "n_train": 10,
    "n_test": 5,
    "feature_dim": 16,
    "wall_time_s": 0.5,
}


@pytest.fixture
def spec(smoke_spec: SweepSpec) -> SweepSpec:
    return smoke_spec


def runs(spec: SweepSpec) -> dict[str, Any]:
    """Every run of the study by its key tag."""
    client = MlflowClient(tracking_uri=spec.tracking_uri())
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    return {r.data.tags[KEY_TAG]: r for r in found}


def checkpoint_with_history(folder: Path, epochs: int) -> str:
    """A checkpoint folder whose manifest holds the metrics of every epoch (as training writes)."""
    folder.mkdir(parents=True)
    history = [
        {"epoch": e, "train/loss": 1.0 / (e + 1), "test/acc_clean": 0.5, "test/acc_pgd": 0.25}
        for e in range(epochs)
    ]
    (folder / "manifest.json").write_text(json.dumps({"history": history}))
    return str(folder)


def test_a_trial_its_epochs_and_a_failed_then_retried_evaluation(
    spec: SweepSpec, tmp_path: Path
) -> None:
    said: list[str] = []
    recorder = Recorder(spec, said.append)
    recorder.open_study(None)
    cfg = spec.expand()[0]
    run_id = recorder.trial_run(cfg)
    recorder.record_epoch(cfg, {"epoch": 0, "train/loss": 1.0, "test/acc_clean": 0.5})
    # Epoch 1's report was lost (a driver died): it is recovered from the checkpoint's history.
    checkpoint = checkpoint_with_history(tmp_path / "ckpt", epochs=2)
    assert recorder.record_trial_done(cfg, checkpoint) == run_id
    tables = storage.join(recorder.results_dir, "tables")
    # Rows wait in the buffer (counted as written: has() knows them) until the next flush,
    # which writes one part per table.
    assert recorder.has("trials", cfg.key) and recorder.has("epochs", cfg.key, 1)
    assert read_table(storage.join(tables, "trials"), "trials").num_rows == 0
    parts_before = {t: len(part_files(storage.join(tables, t))) for t in ("trials", "epochs")}
    recorder.flush()
    for table, before in parts_before.items():
        assert len(part_files(storage.join(tables, table))) == before + 1, table
    epochs = read_table(storage.join(tables, "epochs"), "epochs").to_pylist()
    assert sorted(r["epoch"] for r in epochs) == [0, 1]
    trials = read_table(storage.join(tables, "trials"), "trials").to_pylist()
    assert [(t["trial_key"], t["epochs_completed"], t["mlflow_run_id"]) for t in trials] == [
        (cfg.key, 2, run_id)
    ]

    planned = plan_trial_evaluations(spec, cfg, checkpoint, recorder.results_dir, LoadRequest())
    probe = next(p for p in planned if p.task.kind == "transfer")
    ev = PendingEval(probe, run_id)
    recorder.record_evaluations([Finished(ev, error=RuntimeError("worker lost\nOOM"))])
    failed = runs(spec)[f"eval:{probe.task.eval_key}"]
    assert failed.info.status == "FAILED" and "OOM" in failed.data.tags[ERROR_TAG]
    # The failure's run carries the same tags as a result's (trial_key included).
    assert failed.data.tags[EVAL_KEY_TAG] == probe.task.eval_key
    assert failed.data.tags[TRIAL_KEY_TAG] == cfg.key
    assert failed.data.tags["mlflow.parentRunId"] == run_id
    assert recorder.summary.evals_failed == 1 and said[-1].startswith("  FAILED eval transfer ")
    assert recorder.summary.failures == [f"evaluation {probe.name}: OOM"]

    # The retry (a later driver) reuses the run: FINISHED, the error tag gone, one row.
    again = Recorder(spec, said.append)
    again.open_study(None)
    again.record_evaluations([Finished(ev, result=dict(PROBE_RESULT))])
    found = runs(spec)
    done = found[f"eval:{probe.task.eval_key}"]
    assert done.info.run_id == failed.info.run_id and done.info.status == "FINISHED"
    assert ERROR_TAG not in done.data.tags and done.data.tags[TRIAL_KEY_TAG] == cfg.key
    target = probe.row["target"]
    assert done.data.metrics[f"transfer/{target}/acc"] == pytest.approx(0.8)
    summary = again.finish(started=0.0)  # flushes the buffered row, compacts the tables
    rows = read_table(storage.join(tables, "transfer"), "transfer").to_pylist()
    assert [r["eval_key"] for r in rows] == [probe.task.eval_key]
    assert rows[0]["mlflow_run_id"] == done.info.run_id and rows[0]["test_acc"] == 0.8
    assert all(len(part_files(storage.join(tables, t))) == 1 for t in ("trials", "transfer"))
    trial = runs(spec)[f"trial:{cfg.key}"]
    assert trial.data.metrics[f"transfer/{target}/acc"] == pytest.approx(0.8)  # mirrored
    assert summary.evals_done == 1 and summary.evals_failed == 0
    study = runs(spec)[f"study:{spec.name}"]
    assert study.info.status == "FINISHED"
    last = json.loads(Path(recorder.results_dir, "study.json").read_text())["last_run"]
    assert last["evals_done"] == 1 and "trial_logging_share" in last


def test_a_failed_trial_is_tagged_and_a_later_success_clears_it(spec: SweepSpec) -> None:
    recorder = Recorder(spec, lambda _: None)
    recorder.open_study(None)
    cfg = spec.expand()[1]
    recorder.record_trial_failure(cfg, "CUDA out of memory")
    run = runs(spec)[f"trial:{cfg.key}"]
    assert run.info.status == "FAILED" and run.data.tags[ERROR_TAG] == "CUDA out of memory"
    assert recorder.summary.failures == [f"trial {describe_trial(cfg)}: CUDA out of memory"]
    # A checkpoint-less finish is a failure too; the study run then ends FAILED.
    assert recorder.record_trial_done(cfg, None) is None
    assert recorder.summary.trials_failed == 2
    assert recorder.finish(started=0.0).trials_failed == 2
    assert runs(spec)[f"study:{spec.name}"].info.status == "FAILED"

    later = Recorder(spec, lambda _: None)
    later.open_study(None)
    run_id = later.trial_run(cfg)
    assert run_id == run.info.run_id
    later.mlflow.end_run(run_id, "FINISHED")
    assert ERROR_TAG not in runs(spec)[f"trial:{cfg.key}"].data.tags


def test_an_orphaned_run_is_marked_killed_by_the_next_driver(spec: SweepSpec) -> None:
    first = Recorder(spec, lambda _: None)
    first.open_study(None)
    cfg = spec.expand()[0]
    first.trial_run(cfg)  # the driver dies here: study and trial runs stay RUNNING
    said: list[str] = []
    second = Recorder(spec, said.append)
    second.open_study(None)
    assert said == ["marked 2 MLflow runs KILLED: left RUNNING by an earlier driver"]
    assert runs(spec)[f"trial:{cfg.key}"].info.status == "KILLED"
    assert runs(spec)[f"study:{spec.name}"].info.status == "RUNNING"  # reopened by second
