"""The evaluation registry: a new kind is one entry (and its evaluator), and the planner, the
queue, the writer, the parquet schemas and `study status` all take it from there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from study import evaluations as registry
from study.evaluations import (
    EvalTable,
    EvaluationKind,
    PlanContext,
    PlannedEval,
    grid_columns,
    of_network,
    register_evaluation,
    register_table,
)
from study.plan import plan_trial_evaluations
from study.queue import EvalQueue, PendingEval
from study.recorder import Recorder
from study.sinks.parquet import SCHEMAS, read_table
from study.spec import SweepSpec
from study.status import format_status, study_status
from tests.conftest import write_smoke_spec
from trainables import evals, storage
from trainables.config import EvalTask, LoadRequest, TrainConfig, compute_key
from trainables.evals import register_evaluator, run_evaluation

pytestmark = pytest.mark.unit


class Ran:
    """A handle of the inline backend: what an evaluation returned or raised."""

    def __init__(self, outcome: dict[str, Any] | Exception) -> None:
        self.outcome = outcome


class InlineBackend:
    """Runs each evaluation in this process as it is submitted (the queue without Ray)."""

    def submit(self, pending: PendingEval) -> Ran:
        try:
            return Ran(run_evaluation(pending.planned.task))
        except Exception as exc:
            return Ran(exc)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        return list(handles)

    def get(self, handle: Ran) -> dict[str, Any]:
        if isinstance(handle.outcome, Exception):
            raise handle.outcome
        return handle.outcome


def plan_width(ctx: PlanContext, cfg: TrainConfig, checkpoint: str) -> list[PlannedEval]:
    """The dummy kind: one evaluation per network, settings = the arch's width multiplier."""
    width = cfg.arch.width
    key = compute_key("width", cfg.key, width)
    return [of_network(ctx, cfg, checkpoint, kind="width", key=key, name="width", settings=width)]


def evaluate_width(task: EvalTask, device: Any) -> dict[str, Any]:
    assert task.train is not None
    return {"doubled": 2 * float(task.settings), "eps_seen": task.train.eps}  # type: ignore[arg-type]


@pytest.fixture
def width_kind() -> Iterator[None]:
    """The dummy kind registered for one test, in the study's registry and trainables'."""
    saved = (dict(registry.EVAL_TABLES), dict(registry.EVALUATIONS), dict(evals._EVALUATORS))
    register_table(
        EvalTable(
            "width",
            (
                *grid_columns(),
                pa.field("doubled", pa.float64()),
                pa.field("eps_seen", pa.float64()),
                pa.field("wall_time_s", pa.float64()),
                pa.field("mlflow_run_id", pa.string()),
            ),
        )
    )
    register_evaluation(
        EvaluationKind(
            "width",
            section="evaluations",
            table="width",
            description="twice the width multiplier (a test kind)",
            metrics=lambda row, result: {"width/doubled": result["doubled"]},
            summary=lambda result: f"doubled {result['doubled']:g}",
            settings_param="width",
            trial_prefix="width/",
            plan_network=plan_width,
        )
    )
    register_evaluator("width", evaluate_width)
    yield
    for live, before in zip(
        (registry.EVAL_TABLES, registry.EVALUATIONS, evals._EVALUATORS), saved, strict=True
    ):
        live.clear()
        live.update(before)  # type: ignore[attr-defined]


def only_the_new_kind(raw: dict[str, Any]) -> None:
    for name in ("fisher", "robustness", "inversion"):
        raw["evaluations"][name]["enabled"] = False
    raw["evaluations"]["transfer"]["targets"] = []


@pytest.fixture
def spec(tmp_path: Path) -> SweepSpec:
    spec: SweepSpec = write_smoke_spec(tmp_path, only_the_new_kind)
    return spec


def test_a_new_kind_is_planned_run_recorded_and_counted(width_kind: None, spec: SweepSpec) -> None:
    assert "width" in SCHEMAS and SCHEMAS["width"].names[-4:][0] == "doubled"
    said: list[str] = []
    recorder = Recorder(spec, said.append)
    recorder.open_study(None)
    queue = EvalQueue(InlineBackend())
    for cfg in spec.expand():
        run_id = recorder.trial_run(cfg)
        planned = plan_trial_evaluations(
            spec, cfg, "/no/checkpoint", spec.results_dir(), LoadRequest()
        )
        assert [p.task.kind for p in planned] == ["width"]
        queue.submit([PendingEval(p, run_id) for p in planned])
    recorder.record_evaluations(queue.harvest())
    assert len(queue) == 0 and recorder.summary.evals_done == 2
    assert said[-1] == "  eval  width                                    doubled 2"

    recorder.flush()  # rows are buffered: one part per table per flush
    rows = read_table(storage.join(spec.results_dir(), "tables", "width"), "width").to_pylist()
    assert sorted(r["eps_seen"] for r in rows) == [0.0, 0.5]
    assert all(r["doubled"] == 2.0 and r["mlflow_run_id"] for r in rows)
    recorder.finish(started=0.0)
    status = study_status(spec)
    assert status.rows["width"] == 2 and status.eval_runs == {"FINISHED": 2}
    assert "evaluations done 2, running 0, failed 0" in format_status(status)
    assert "  width: 2 rows" in format_status(status).splitlines()


def test_a_kind_must_name_a_declared_table_and_one_planner(width_kind: None) -> None:
    kind = registry.EVALUATIONS["width"]
    with pytest.raises(KeyError, match="table 'nowhere', which is not declared"):
        register_evaluation(EvaluationKind(**{**kind.__dict__, "kind": "lost", "table": "nowhere"}))
    with pytest.raises(ValueError, match="exactly one of plan_network"):
        register_evaluation(
            EvaluationKind(**{**kind.__dict__, "kind": "both", "plan_study": lambda ctx: []})
        )
    assert set(registry.EVALUATIONS) >= {"width", "transfer", "fisher"}
    assert "lost" not in registry.EVALUATIONS and "both" not in registry.EVALUATIONS


def test_every_builtin_kind_has_its_table_and_an_evaluator() -> None:
    assert set(registry.EVALUATIONS) == set(evals.EVAL_KINDS)
    for kind in registry.EVALUATIONS.values():
        assert kind.table in registry.EVAL_TABLES and kind.table in SCHEMAS
        assert (kind.plan_network is None) != (kind.plan_study is None)
        assert kind.description and kind.settings_param
