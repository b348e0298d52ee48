"""The report's search section: the Pareto front of a search study's trials."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.report import search_section

pytestmark = pytest.mark.unit

INFO = {
    "spec": {
        "search": {
            "objectives": [
                {"metric": "test_acc_clean", "direction": "maximize"},
                {"metric": "transfer:t", "direction": "maximize"},
            ]
        }
    }
}


def tables(points: list[tuple[float, float]]) -> dict[str, pd.DataFrame]:
    keys = [f"k{i}" for i in range(len(points))]
    trials = pd.DataFrame(
        {
            "trial_key": keys,
            "source": "s",
            "arch": "a",
            "norm": "l2",
            "attack": "pgd3",
            "eps": [0.1 * i for i in range(len(points))],
            "seed": 0,
            "test_acc_clean": [p[0] for p in points],
            "test_acc_pgd": 0.1,
            "proposed_by": "optuna:nsga2",
        }
    )
    transfer = pd.DataFrame(
        {"trial_key": keys, "kind": "probe", "target": "t", "test_acc": [p[1] for p in points]}
    )
    return {"trials": trials, "transfer": transfer}


def test_the_front_holds_exactly_the_non_dominated_trials() -> None:
    points = [(0.9, 0.5), (0.8, 0.8), (0.7, 0.7), (0.5, 0.9), (0.6, 0.6)]
    front = search_section(tables(points), INFO)
    assert front is not None
    assert sorted(front["trial_key"]) == ["k0", "k1", "k3"]
    assert list(front.columns[-2:]) == ["test_acc_clean", "transfer:t"]


def test_a_grid_study_has_no_search_section() -> None:
    assert search_section(tables([(0.9, 0.5)]), {"spec": {"grid": {}}}) is None
