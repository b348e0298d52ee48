"""MLflow sink against a real `mlflow server` on 127.0.0.1: the run hierarchy and batching."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from study.sinks.mlflow import MlflowSink

pytestmark = pytest.mark.integration


def test_hierarchy_is_found_by_search_runs_and_reused_by_key(
    mlflow_server: str, tmp_path: Path
) -> None:
    sink = MlflowSink(mlflow_server, "hierarchy", tmp_path / "art")
    parent = sink.run_for(
        "study:h", name="h", role="study", parent_run_id=None, params={"grid": {"eps": [0, 0.5]}}
    )
    trial = sink.run_for(
        "trial:k1",
        name="trial 1",
        role="trial",
        parent_run_id=parent,
        params={"eps": 0.5, "optim": {"lr": 0.1}},
        tags={"trial_key": "k1"},
    )
    for epoch in range(3):
        sink.log_metrics(
            trial, {"train/loss": 1.0 / (epoch + 1), "test/acc_pgd": 0.1 * epoch}, step=epoch
        )
    evaluation = sink.run_for("eval:e1", name="transfer", role="evaluation", parent_run_id=trial)
    sink.log_metrics(evaluation, {"transfer/t/acc": 0.9})
    sink.end_run(evaluation)
    sink.end_run(trial)
    sink.end_run(parent)

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["hierarchy"])
    assert len(runs) == 3
    children = mlflow.search_runs(
        experiment_names=["hierarchy"], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert children["run_id"].tolist() == [trial]
    assert children["params.optim.lr"].iloc[0] == "0.1"
    assert children["tags.trial_key"].iloc[0] == "k1"
    history = sink.client.get_metric_history(trial, "train/loss")
    assert [m.step for m in history] == [0, 1, 2]
    nested = mlflow.search_runs(
        experiment_names=["hierarchy"], filter_string=f"tags.mlflow.parentRunId = '{trial}'"
    )
    assert nested["metrics.transfer/t/acc"].tolist() == [0.9]
    assert set(runs["status"]) == {"FINISHED"}

    # A second sink (a re-run) finds the same runs by key instead of creating new ones.
    again = MlflowSink(mlflow_server, "hierarchy", tmp_path / "art")
    assert again.run_for("trial:k1", name="trial 1", role="trial", parent_run_id=parent) == trial
    again.end_run(trial)
    assert len(mlflow.search_runs(experiment_names=["hierarchy"])) == 3


def test_metrics_are_buffered_until_flush(mlflow_server: str, tmp_path: Path) -> None:
    sink = MlflowSink(mlflow_server, "buffering", tmp_path / "art")
    run = sink.run_for("r", name="r", role="trial", parent_run_id=None)
    for step in range(50):
        sink.log_metrics(run, {"m": float(step)}, step=step)
    assert sink.client.get_metric_history(run, "m") == []
    sink.flush()
    assert len(sink.client.get_metric_history(run, "m")) == 50


def test_tags_go_with_the_next_flush_of_the_runs_metrics(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's machine tags ride with its buffered metrics: one log_batch, not one each."""
    sink = MlflowSink(mlflow_server, "tags", tmp_path / "art")
    run = sink.run_for("r", name="r", role="trial", parent_run_id=None)
    alone = sink.run_for("s", name="s", role="trial", parent_run_id=None)
    batches: list[str] = []
    real = sink.client.log_batch

    def counted(run_id: str, **kwargs: object) -> object:
        batches.append(run_id)
        return real(run_id, **kwargs)

    monkeypatch.setattr(sink.client, "log_batch", counted)
    sink.log_metrics(run, {"train/loss": 0.5}, step=0)
    sink.set_tags(run, {"atsweep.host": "h", "atsweep.precision": "bf16"})
    sink.set_tags(alone, {"atsweep.host": "h2"})  # a run with tags and no metrics
    assert batches == [] and "atsweep.host" not in sink.client.get_run(run).data.tags
    sink.flush()
    assert sorted(batches) == sorted([run, alone])  # one call per run
    tags = sink.client.get_run(run).data.tags
    assert (tags["atsweep.host"], tags["atsweep.precision"]) == ("h", "bf16")
    assert sink.client.get_run(alone).data.tags["atsweep.host"] == "h2"
    assert [m.value for m in sink.client.get_metric_history(run, "train/loss")] == [0.5]
    sink.flush()
    assert len(batches) == 2  # nothing buffered: no call


def test_batches_respect_mlflows_limits_and_lose_nothing(
    mlflow_server: str, tmp_path: Path
) -> None:
    sink = MlflowSink(mlflow_server, "limits", tmp_path / "art")
    params = {f"p{i}": i for i in range(250)}  # 3 batches of at most 100 params
    metrics = {f"m{i}": float(i) for i in range(1500)}  # 2 batches of at most 1000 metrics
    run = sink.run_for("r", name="r", role="evaluation", parent_run_id=None, params=params,
                       metrics=metrics)  # fmt: skip
    calls = sink.client.seconds
    sink.end_run(run, "FINISHED", tags={f"t{i}": str(i) for i in range(150)})
    assert sink.client.seconds > calls  # the time in MLflow calls is counted
    data = sink.client.get_run(run).data
    assert len(data.params) == 250 and data.params["p249"] == "249"
    assert len(data.metrics) == 1500 and data.metrics["m1499"] == 1499.0
    assert sum(k.startswith("t") and k[1:].isdigit() for k in data.tags) == 150
    assert sink.client.get_run(run).info.status == "FINISHED"
