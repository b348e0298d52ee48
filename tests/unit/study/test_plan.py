"""The planner: every evaluation a spec asks for, once, with keys that never change by accident."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from study.evaluations import EVALUATIONS
from study.plan import describe_trial, not_cached, plan_baselines, plan_trial_evaluations
from study.spec import load_spec
from tests.conftest import ROOT
from trainables.config import LoadRequest

pytestmark = pytest.mark.unit

SMOKE = ROOT / "sweeps" / "smoke.yaml"
# The eval keys of sweeps/smoke.yaml's first trial and its baselines, as the studies on disk
# have them: a change to a config class or a key function that changes a key fails here
# (every study would recompute it). The inversion keys changed on purpose twice: when the
# inversion's optimiser and schedule joined its config (Adam with a cosine decay), and when its
# start and restarts did (the mean image as the default start).
SMOKE_TRIAL = "80e0aba1f6e3a7a4"
SMOKE_KEYS = {
    ("fisher", "a2da4d6392695a99"),
    ("inversion", "6ea406536831a59c"),
    ("inversion", "a1ecb2106d19eb53"),
    ("robustness", "cdffd46b5346132d"),
    ("transfer", "1a5d00388a0ff9fd"),
}
SMOKE_BASELINES = {
    ("random_init", "e87e854632065a88"),
    ("raw_pixels", "223d2cb285aee6c8"),
    ("fisher_random_init", "2986eceb473619f6"),
}


def test_the_smoke_spec_plans_its_evaluations_with_stable_keys() -> None:
    spec = load_spec(SMOKE)
    cfg = spec.expand()[0]
    assert cfg.key == SMOKE_TRIAL
    planned = plan_trial_evaluations(spec, cfg, "/ckpt", "/results", LoadRequest())
    assert {(p.task.kind, p.task.eval_key) for p in planned} == SMOKE_KEYS
    baselines = plan_baselines(spec, LoadRequest())
    assert {(p.task.kind, p.task.eval_key) for p in baselines} == SMOKE_BASELINES


def test_each_planned_evaluation_carries_its_row_identity_table_and_task() -> None:
    spec = load_spec(SMOKE)
    cfg = spec.expand()[1]
    load = LoadRequest(root="/data")
    planned = plan_trial_evaluations(spec, cfg, "/ckpt", "/results", load)
    for p in planned:
        assert p.table == EVALUATIONS[p.task.kind].table
        assert p.row["eval_key"] == p.task.eval_key and p.row["trial_key"] == cfg.key
        assert (p.row["eps"], p.row["arch"], p.row["attack"]) == (cfg.eps, "small_cnn", "pgd3")
        assert p.task.train == cfg and p.task.checkpoint == "/ckpt" and p.task.load == load
    inversion = [p for p in planned if p.task.kind == "inversion"]
    assert sorted(p.row["variant"] for p in inversion) == ["plain", "tv"]
    assert all(p.task.artifact_path.startswith("/results/artifacts/inversion/") for p in inversion)
    assert len({p.task.eval_key for p in planned}) == len(planned)


def test_turning_evaluations_off_and_on_changes_only_their_own_tasks(tmp_path: Path) -> None:
    import yaml

    raw = yaml.safe_load(SMOKE.read_text())
    raw["evaluations"]["fisher"]["enabled"] = False
    raw["evaluations"]["transfer"]["finetune"] = {"enabled": True, "epochs": 1}
    raw["evaluations"]["transfer"]["baselines"] = False
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "s.yaml")
    cfg = spec.expand()[0]
    planned = plan_trial_evaluations(spec, cfg, "/c", "/r", LoadRequest())
    kinds = Counter(p.task.kind for p in planned)
    assert kinds == {"transfer": 1, "finetune": 1, "robustness": 1, "inversion": 2}
    # The kinds left as they were keep their keys.
    unchanged = {(p.task.kind, p.task.eval_key) for p in planned if p.task.kind != "finetune"}
    assert unchanged == {k for k in SMOKE_KEYS if k[0] != "fisher"}
    assert plan_baselines(spec, LoadRequest()) == []


class Tables:
    """What not_cached asks of the recorder: has(table, key) and the summary's count."""

    def __init__(self, rows: set[tuple[str, str]]) -> None:
        self.rows = rows
        self.summary = type("Summary", (), {"evals_cached": 0})()

    def has(self, table: str, *key: str) -> bool:
        return (table, *key) in self.rows


def test_not_cached_leaves_out_and_counts_what_the_tables_hold() -> None:
    spec = load_spec(SMOKE)
    cfg = spec.expand()[0]
    planned = plan_trial_evaluations(spec, cfg, "/ckpt", "/results", LoadRequest())
    fisher = next(p for p in planned if p.task.kind == "fisher")
    tables = Tables({("fisher", fisher.task.eval_key), ("transfer", fisher.task.eval_key)})
    left = not_cached(planned, tables)
    assert fisher not in left and len(left) == len(planned) - 1
    assert tables.summary.evals_cached == 1


def test_a_trial_has_a_readable_name() -> None:
    cfg = load_spec(SMOKE).expand()[1]
    assert describe_trial(cfg) == "digits-c01234 small_cnn l2 pgd3 eps=0.5 seed=0"
