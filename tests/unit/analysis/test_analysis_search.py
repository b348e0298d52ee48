"""Pareto fronts, hypervolumes and the search-vs-grid figure (analysis/search.py)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    hypervolume,
    objective_points,
    pareto_front,
    plot_search_vs_grid,
    search_summary,
)
from analysis.figures import find_pareto_front
from analysis.stats import load_tables
from tests.analysis_study import EPS, SEEDS, build_study, noisy, trial_key

pytestmark = pytest.mark.unit

Tables = Mapping[str, pd.DataFrame]


# ----- brute-force references --------------------------------------------------------------------
def brute_front(points: np.ndarray, maximize: Sequence[bool]) -> list[int]:
    """Rows no other row beats: at least as good everywhere and strictly better somewhere."""
    signs = np.where(np.asarray(maximize), 1.0, -1.0)
    better = points * signs  # higher is better in every column

    def dominates(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.all(a >= b) and np.any(a > b))

    return [
        i
        for i in range(len(points))
        if not any(dominates(better[j], better[i]) for j in range(len(points)) if j != i)
    ]


def union_volume(points: np.ndarray, reference: np.ndarray, maximize: Sequence[bool]) -> float:
    """Exact volume of the union of the boxes by inclusion-exclusion over all subsets."""
    signs = np.where(np.asarray(maximize), -1.0, 1.0)
    q, r = points * signs, reference * signs  # minimised: box [q, r]
    q = q[np.all(q < r, axis=1)]
    total = 0.0
    for size in range(1, len(q) + 1):
        for subset in itertools.combinations(range(len(q)), size):
            corner = q[list(subset)].max(axis=0)
            total += (-1) ** (size + 1) * float(np.prod(np.clip(r - corner, 0, None)))
    return total


def cell_count(points: np.ndarray, side: int) -> int:
    """Integer points in [0, side]^m, reference 0, maximised: the unit cells they dominate."""
    m = points.shape[1]
    covered = np.zeros((side,) * m, dtype=bool)
    for p in points.astype(int):
        covered[tuple(slice(0, max(int(v), 0)) for v in p)] = True
    return int(covered.sum())


# ----- Pareto front ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "maximize",
    [(True, True), (True, False), (False, False), (True, True, True), (True, False, True)],
)
@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(maximize: tuple[bool, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = len(maximize)
    continuous = rng.random((60, m))
    # Few distinct values: many ties on one objective and exact duplicates.
    ties = rng.integers(0, 5, size=(60, m)).astype(float)
    for points in (continuous, ties):
        front = pareto_front(points, maximize)
        assert front.tolist() == brute_front(points, maximize)
        assert front.dtype == np.int64
        # The front depends on the values only, not on the order of the rows.
        order = rng.permutation(len(points))
        assert sorted(order[pareto_front(points[order], maximize)]) == front.tolist()


def test_pareto_front_ties_duplicates_and_nan() -> None:
    points = np.array([[1.0, 3.0], [3.0, 1.0], [1.0, 3.0], [1.0, 2.0], [np.nan, 9.0], [2.0, 2.0]])
    # Both copies of (1, 3) are on the front; (1, 2) is beaten by (1, 3) through a tie on x.
    assert pareto_front(points, (True, True)).tolist() == [0, 1, 2, 5]
    assert pareto_front(points, (True, True), unique=True).tolist() == [0, 1, 5]
    assert pareto_front(points, True).tolist() == [0, 1, 2, 5]
    assert pareto_front(points, (False, False)).tolist() == [1, 3]  # (3, 1) and (1, 2)
    assert pareto_front(np.zeros((0, 2)), (True, True)).tolist() == []
    assert pareto_front([[0.5, 0.5]], (True, True)).tolist() == [0]
    with pytest.raises(ValueError, match="maximize has 3 entries"):
        pareto_front(points, (True, True, True))
    with pytest.raises(ValueError, match="2-D"):
        pareto_front([1.0, 2.0], (True,))


def test_the_figure_and_the_search_take_the_same_front_of_ties_and_duplicates() -> None:
    # The trade-off figure's front (figures.find_pareto_front, x and y maximised) and the search's
    # (search.pareto_front) follow one rule: both copies of (1, 3) and of (2, 2) are on it;
    # (1, 2) ties (1, 3) on x and loses on y, (0.5, 3) ties it on y and loses on x, and the second
    # (1, 2) is a duplicate of a dominated point.
    x = [1.0, 3.0, 1.0, 1.0, 2.0, 2.0, 0.5, 1.0]
    y = [3.0, 1.0, 3.0, 2.0, 2.0, 2.0, 3.0, 2.0]
    points = np.column_stack([x, y])
    expected = [0, 1, 2, 4, 5]
    assert brute_front(points, (True, True)) == expected
    assert pareto_front(points, (True, True)).tolist() == expected
    assert sorted(find_pareto_front(x, y)) == expected
    # The figure draws its front left to right.
    assert find_pareto_front(x, y) == [0, 2, 4, 5, 1]
    rng = np.random.default_rng(11)
    for _ in range(20):
        grid = rng.integers(0, 4, size=(30, 2)).astype(float)  # many ties and duplicates
        front = find_pareto_front(grid[:, 0].tolist(), grid[:, 1].tolist())
        assert sorted(front) == pareto_front(grid, (True, True)).tolist()
        assert sorted(front) == brute_front(grid, (True, True))


# ----- hypervolume -------------------------------------------------------------------------------
def test_hypervolume_2d_by_hand() -> None:
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    # Columns x in [0,1], [1,2], [2,3] reach heights 3, 2 and 1.
    assert hypervolume(points, (0.0, 0.0), (True, True)) == pytest.approx(6.0)
    # Minimising both from (4, 4): boxes [x, 4] x [y, 4]; 3*1 + 2*1 + 1*1 + 2 + 1 ... by columns:
    # x in [1,2]: y from 3; [2,3]: from 2; [3,4]: from 1 -> 1 + 2 + 3.
    assert hypervolume(points, (4.0, 4.0), (False, False)) == pytest.approx(6.0)
    # Mixed: maximise x from 0, minimise y from 4: each box [0, x] x [y, 4].
    # x in [0,1]: y from 1 -> 3; [1,2]: 3; [2,3]: 3 -> 9.
    assert hypervolume(points, (0.0, 4.0), (True, False)) == pytest.approx(9.0)
    assert hypervolume([[0.9, 0.6]], (0.0, 0.0), (True, True)) == pytest.approx(0.54)


def test_hypervolume_ignores_points_not_strictly_dominating_the_reference() -> None:
    ref = (0.0, 0.0)
    assert hypervolume([[1.0, 0.0]], ref, (True, True)) == 0.0
    assert hypervolume([[-1.0, 5.0]], ref, (True, True)) == 0.0
    assert hypervolume([[np.nan, 5.0]], ref, (True, True)) == 0.0
    assert hypervolume(np.zeros((0, 2)), ref, (True, True)) == 0.0
    base = hypervolume([[2.0, 2.0]], ref, (True, True))
    assert hypervolume([[2.0, 2.0], [3.0, 0.0], [0.0, 3.0], [-1, 9]], ref, (True, True)) == base
    with pytest.raises(ValueError, match="reference has 3 values"):
        hypervolume([[1.0, 1.0]], (0.0, 0.0, 0.0), (True, True))


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_counts_grid_cells(m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    side = 8 if m < 4 else 6
    points = rng.integers(0, side + 1, size=(25, m)).astype(float)
    assert hypervolume(points, np.zeros(m), True) == pytest.approx(cell_count(points, side))
    # The same boxes with some objectives minimised: mirror them around side.
    maximize = [k % 2 == 0 for k in range(m)]
    mirrored = np.where(maximize, points, side - points)
    reference = np.where(maximize, 0.0, float(side))
    assert hypervolume(mirrored, reference, maximize) == pytest.approx(cell_count(points, side))


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_matches_inclusion_exclusion(m: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    maximize = [True, False, True, False][:m]
    points = rng.random((10, m))
    reference = np.where(maximize, 0.1, 0.9)  # some points fall outside the reference box
    exact = union_volume(points, reference, maximize)
    assert exact > 0
    assert hypervolume(points, reference, maximize) == pytest.approx(exact, rel=1e-12)


def test_hypervolume_3d_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    # Points near the sphere, so that most of them are on the front.
    raw = np.abs(rng.normal(size=(200, 3)))
    points = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    exact = hypervolume(points, (0.0, 0.0, 0.0), (True, True, True))
    samples = rng.random((200_000, 3))
    inside = np.zeros(len(samples), dtype=bool)
    for p in points:
        inside |= np.all(samples <= p, axis=1)
    estimate = inside.mean()  # the unit cube has volume 1
    stderr = np.sqrt(estimate * (1 - estimate) / len(samples))
    assert abs(exact - estimate) < 5 * stderr
    assert np.pi / 6 * 0.8 < exact < np.pi / 6  # inside the sphere's octant


@pytest.mark.parametrize("m", [2, 3])
def test_hypervolume_invariant_to_dominated_and_duplicate_points(m: int) -> None:
    rng = np.random.default_rng(3)
    maximize = [True, False, True][:m]
    signs = np.where(maximize, 1.0, -1.0)
    points = rng.random((30, m))
    reference = np.where(maximize, 0.0, 1.0)
    base = hypervolume(points, reference, maximize)
    # Each extra point is a front point made worse on every objective.
    worse = points[rng.integers(0, 30, size=40)] - signs * rng.random((40, m)) * 0.2
    extended = np.vstack([points, worse, points[:5]])
    assert hypervolume(extended, reference, maximize) == pytest.approx(base, rel=1e-12)
    front = pareto_front(points, maximize)
    assert hypervolume(points[front], reference, maximize) == pytest.approx(base, rel=1e-12)
    assert hypervolume(points[::-1], reference, maximize) == pytest.approx(base, rel=1e-12)


# ----- objectives of a study ---------------------------------------------------------------------
CLEAN = {0.0: 0.95, 0.25: 0.92, 0.5: 0.88, 1.0: 0.80}
PGD = {0.0: 0.05, 0.25: 0.45, 0.5: 0.55, 1.0: 0.60}
PETS = {0.0: 0.80, 0.25: 0.85, 0.5: 0.90, 1.0: 0.82}
AIRCRAFT = {0.0: 0.50, 0.25: 0.55, 0.5: 0.56, 1.0: 0.52}


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    results = tmp_path_factory.mktemp("grid")
    build_study(
        results,
        clean=noisy(CLEAN, 0.005),
        pgd=noisy(PGD, 0.01),
        transfer={"pets": noisy(PETS, 0.01), "aircraft": noisy(AIRCRAFT, 0.01)},
        raw_pixels={"pets": 0.30},
        random_init={"pets": 0.40},
    )
    return load_tables(results)


@pytest.fixture(scope="module")
def search_study(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    """A search at eps the grid lacks; trials proposed by NSGA-II, two of them by the grid."""
    eps = (0.1, 0.3, 0.4, 0.7)
    results = tmp_path_factory.mktemp("search")
    build_study(
        results,
        eps=eps,
        seeds=(0, 1),
        clean=noisy({0.1: 0.94, 0.3: 0.915, 0.4: 0.90, 0.7: 0.85}, 0.004),
        transfer={"pets": noisy({0.1: 0.84, 0.3: 0.88, 0.4: 0.91, 0.7: 0.87}, 0.01)},
    )
    tables = load_tables(results)
    trials = tables["trials"].copy()
    trials["proposed_by"] = "optuna:nsga2"
    trials.loc[trials.index[:2], "proposed_by"] = [None, ""]
    return {**tables, "trials": trials}


def test_objective_points_of_a_grid_study(grid_study: Tables) -> None:
    objectives = ["test_acc_clean", "transfer:pets", "test_acc_pgd", "transfer:aircraft"]
    points = objective_points(grid_study, objectives)
    assert list(points.columns) == [
        "trial_key",
        "source",
        "arch",
        "norm",
        "attack",
        "eps",
        "seed",
        "proposed_by",
        *objectives,
    ]
    assert len(points) == len(EPS) * len(SEEDS)
    assert points["trial_key"].is_unique
    assert set(points["proposed_by"]) == {"grid"}  # the table has no proposed_by column
    row = points.set_index("trial_key").loc[trial_key(0.5, 2)]
    assert row["eps"] == 0.5 and row["seed"] == 2
    assert row["test_acc_clean"] == pytest.approx(0.88 + 0.005)
    assert row["test_acc_pgd"] == pytest.approx(0.55 + 0.01)
    assert row["transfer:pets"] == pytest.approx(0.90 + 0.01)
    assert row["transfer:aircraft"] == pytest.approx(0.56 + 0.01)
    # The planted means come back over seeds.
    means = points.groupby("eps")["transfer:pets"].mean()
    assert means.to_dict() == pytest.approx(PETS)


def test_objective_points_average_probes_and_leave_missing_as_nan(grid_study: Tables) -> None:
    transfer = grid_study["transfer"]
    key = trial_key(0.0, 0)
    extra = transfer[(transfer["trial_key"] == key) & (transfer["target"] == "pets")].copy()
    extra["eval_key"] = "probe-pets-again"
    extra["test_acc"] = 0.0
    dropped = transfer["trial_key"].eq(trial_key(1.0, 1)) & transfer["target"].eq("aircraft")
    tables = {**grid_study, "transfer": pd.concat([transfer[~dropped], extra])}
    points = objective_points(tables, ["transfer:pets", "transfer:aircraft", "transfer:none"])
    by_key = points.set_index("trial_key")
    assert by_key.loc[key, "transfer:pets"] == pytest.approx((0.80 - 0.01 + 0.0) / 2)
    assert np.isnan(by_key.loc[trial_key(1.0, 1), "transfer:aircraft"])
    assert points["transfer:none"].isna().all()
    with pytest.raises(ValueError, match="unknown objective"):
        objective_points(grid_study, ["test_acc"])
    with pytest.raises(ValueError, match="unknown objective"):
        objective_points(grid_study, ["transfer:"])
    with pytest.raises(ValueError, match="repeat"):
        objective_points(grid_study, ["test_acc_clean", "test_acc_clean"])


def test_objective_points_read_proposed_by(search_study: Tables) -> None:
    points = objective_points(search_study, ["test_acc_clean"])
    assert points["proposed_by"].value_counts().to_dict() == {"optuna:nsga2": 6, "grid": 2}
    assert points["proposed_by"].tolist() == sorted(points["proposed_by"])


def test_objective_points_of_an_empty_study(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    points = objective_points(load_tables(tmp_path), ["test_acc_clean", "transfer:pets"])
    assert points.empty and "transfer:pets" in points.columns
    assert objective_points({}, ["test_acc_pgd"]).empty


def test_search_summary_per_proposer(search_study: Tables) -> None:
    objectives = ["test_acc_clean", "transfer:pets"]
    summary = search_summary(search_study, objectives, (0.0, 0.0), (True, True))
    assert summary["proposed_by"].tolist() == ["grid", "optuna:nsga2"]
    assert summary["trials"].tolist() == [2, 6]
    assert summary["complete"].tolist() == [2, 6]
    points = objective_points(search_study, objectives)
    for _, row in summary.iterrows():
        values = points[points["proposed_by"] == row["proposed_by"]][objectives].to_numpy()
        assert row["front_size"] == len(pareto_front(values, (True, True)))
        assert row["hypervolume"] == pytest.approx(hypervolume(values, (0, 0), (True, True)))
    # The grid rows are the first two trials (eps 0.1, seeds 0 and 1): seed 1 (offset 0) beats
    # seed 0 (offset -1) on both objectives.
    grid = summary.set_index("proposed_by").loc["grid"]
    assert grid["front_size"] == 1
    assert grid["hypervolume"] == pytest.approx(0.94 * 0.84)


def test_search_summary_of_a_grid_study(grid_study: Tables) -> None:
    summary = search_summary(grid_study, ["test_acc_clean", "test_acc_pgd"], (0, 0), True)
    assert summary.to_dict("records")[0]["proposed_by"] == "grid"
    assert len(summary) == 1 and summary["trials"].iloc[0] == 12
    assert summary["hypervolume"].iloc[0] > 0.5


# ----- figure ------------------------------------------------------------------------------------
def test_plot_search_vs_grid_writes_png_and_svg(
    search_study: Tables, grid_study: Tables, tmp_path: Path
) -> None:
    paths = plot_search_vs_grid(
        search_study, grid_study, ["test_acc_clean", "transfer:pets"], tmp_path
    )
    assert [p.name for p in paths] == [
        "search_vs_grid-test_acc_clean-transfer_pets.png",
        "search_vs_grid-test_acc_clean-transfer_pets.svg",
    ]
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    objectives = ["test_acc_clean", "transfer:pets"]
    hvs = [
        hypervolume(objective_points(t, objectives)[objectives].to_numpy(), (0, 0), True)
        for t in (search_study, grid_study)
    ]
    for label in (
        "search: trials (n=8)",
        "grid: trials (n=12)",
        "Pareto front",
        f"hypervolume {hvs[0]:.4g}",
        f"hypervolume {hvs[1]:.4g}",
        "training ε (L2",
        "source clean test accuracy (fraction)",
        "linear-probe accuracy on pets (fraction)",
        "ε=0.4",
    ):
        assert label in text, label


def test_plot_search_vs_grid_with_one_side_empty_or_none(
    search_study: Tables, tmp_path: Path
) -> None:
    (tmp_path / "empty" / "tables").mkdir(parents=True)
    empty = load_tables(tmp_path / "empty")
    objectives = ["test_acc_clean", "test_acc_pgd"]
    paths = plot_search_vs_grid(search_study, empty, objectives, tmp_path / "one", (True, False))
    assert all(p.stat().st_size > 0 for p in paths) and len(paths) == 2
    assert "grid: trials (n=0)" in paths[1].read_text()
    assert plot_search_vs_grid(empty, {}, objectives, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="2 objectives"):
        plot_search_vs_grid(search_study, empty, ["test_acc_clean"], tmp_path)
