"""What a study evaluates: the evaluations of each trained network, and the study's baselines.

Pure planning (no Ray, MLflow or parquet): each kind of the registry (study/evaluations.py)
plans its own evaluations from the spec; the study submits the ones not in its tables yet, and
benchmarks/bench_study.py runs the same tasks in a plain loop to measure the orchestration tax.
"""

from __future__ import annotations

from typing import Protocol

from study.evaluations import EVALUATIONS, PlanContext, PlannedEval
from study.spec import SweepSpec
from trainables.config import LoadRequest, TrainConfig


def describe_trial(cfg: TrainConfig) -> str:
    """A readable one-line name of a grid cell, or of an imported network (its name first)."""
    cell = (
        f"{cfg.source.id} {cfg.arch.id} {cfg.norm} {cfg.attack_id} eps={cfg.eps:g} seed={cfg.seed}"
    )
    name = getattr(cfg, "name", "")
    return f"{name}: {cell}" if name else cell


def plan_trial_evaluations(
    spec: SweepSpec, cfg: TrainConfig, checkpoint: str, results_dir: str, load: LoadRequest
) -> list[PlannedEval]:
    """Every evaluation of the network trained by cfg (its final checkpoint)."""
    ctx = PlanContext(spec, load, results_dir)
    return [
        planned
        for kind in EVALUATIONS.values()
        if kind.plan_network is not None
        for planned in kind.plan_network(ctx, cfg, checkpoint)
    ]


def plan_baselines(
    spec: SweepSpec, load: LoadRequest, networks: tuple[TrainConfig, ...] = ()
) -> list[PlannedEval]:
    """The evaluations that run once per study: the transfer baselines of every target (the
    random-init ones of the grid's cells and of the imported networks)."""
    ctx = PlanContext(spec, load, spec.results_dir(), networks)
    return [
        planned
        for kind in EVALUATIONS.values()
        if kind.plan_study is not None
        for planned in kind.plan_study(ctx)
    ]


class _Counts(Protocol):
    evals_cached: int


class Written(Protocol):
    """What the planner asks of the tables: has(table, key), and where to count what they hold."""

    @property
    def summary(self) -> _Counts: ...

    def has(self, table: str, *key: str) -> bool: ...


def not_cached(planned: list[PlannedEval], written: Written) -> list[PlannedEval]:
    """The planned evaluations whose rows are not in their tables yet; the others are counted
    as cached."""
    left = [p for p in planned if not written.has(p.table, p.task.eval_key)]
    written.summary.evals_cached += len(planned) - len(left)
    return left
