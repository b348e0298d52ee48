"""Seed statistics (t quantile, CIs, Welch), table loading with its schema-version check, joins."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.stats import (
    KNOWN_SCHEMA_VERSION,
    SchemaVersionError,
    aggregate_seeds,
    check_schema_versions,
    join_trials,
    load_tables,
    mean_ci,
    t_quantile,
    welch_diff_ci,
)
from tests.analysis_study import build_study, noisy, trial_key, write_table

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281), (30, 2.0423)],
)
def test_t_quantile_matches_printed_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_is_symmetric_and_tends_to_the_normal() -> None:
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4), rel=1e-12)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-10)
    assert t_quantile(0.975, 1e9) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.975, 1e5) == pytest.approx(1.959985, abs=1e-5)


def test_t_quantile_matches_scipy_for_real_degrees_of_freedom() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (0.5, 1.0, 1.7, 2.94, 4.0, 9.5, 29.0, 120.0, 5000.0):
        for p in (0.6, 0.9, 0.975, 0.99, 0.9995, 0.01):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-9)


def test_t_quantile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="p must be in"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.975, 0)


def test_mean_ci_of_three_values_by_hand() -> None:
    # mean 2, sd 1, se 1/sqrt(3), t_{0.975, 2} = 4.302653: half width 2.484138.
    out = mean_ci([1.0, 2.0, 3.0])
    assert out["mean"] == 2.0
    assert out["std"] == 1.0
    assert out["n"] == 3
    assert out["ci_low"] == pytest.approx(2.0 - 4.302653 / math.sqrt(3), abs=1e-6)
    assert out["ci_high"] == pytest.approx(4.484138, abs=1e-6)


def test_mean_ci_with_one_seed_is_undetermined_and_ignores_nan() -> None:
    out = mean_ci([0.7, float("nan")])
    assert out["mean"] == 0.7
    assert out["n"] == 1
    assert math.isnan(out["std"]) and math.isnan(out["ci_low"]) and math.isnan(out["ci_high"])
    assert mean_ci([])["n"] == 0


def test_welch_difference_ci_by_hand() -> None:
    # se^2 = 1/3 + 4/3; Welch df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.9412.
    out = welch_diff_ci([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    assert out["diff"] == -4.0
    assert out["df"] == pytest.approx(2.941176, abs=1e-6)
    half = t_quantile(0.975, out["df"]) * math.sqrt(5 / 3)
    assert out["ci_low"] == pytest.approx(-4.0 - half)
    assert out["ci_low"] == pytest.approx(-8.155400, abs=1e-5)  # scipy's ttest_ind interval
    assert out["ci_high"] == pytest.approx(0.155400, abs=1e-5)


def test_welch_difference_degenerate_cases() -> None:
    flat = welch_diff_ci([1.0, 1.0], [0.5, 0.5])
    assert (flat["diff"], flat["ci_low"], flat["ci_high"]) == (0.5, 0.5, 0.5)
    assert flat["df"] == math.inf
    one = welch_diff_ci([1.0], [0.5, 0.7])
    assert one["diff"] == pytest.approx(0.4)
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert math.isnan(one["df"])
    # NaNs are dropped before anything is computed.
    nan = float("nan")
    assert welch_diff_ci([1.0, nan, 2.0, 3.0], [4.0, 6.0, nan, 8.0]) == pytest.approx(
        welch_diff_ci([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    )
    assert math.isnan(welch_diff_ci([nan, nan], [1.0, 2.0])["diff"])


@pytest.mark.parametrize("seed", range(5))
def test_welch_difference_follows_welch_satterthwaite(seed: int) -> None:
    # The interval written out by hand: diff +- t_{(1+level)/2, df} * se with Welch's df.
    rng = np.random.default_rng(seed)
    a = rng.normal(0.8, 0.02, size=int(rng.integers(2, 8)))
    b = rng.normal(0.7, 0.05, size=int(rng.integers(2, 8)))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    for level in (0.95, 1 - 0.05 / 3):
        out = welch_diff_ci(a, b, level)
        half = t_quantile(0.5 + level / 2, df) * math.sqrt(va + vb)
        assert out["df"] == pytest.approx(df, rel=1e-12)
        assert out["diff"] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        assert out["ci_low"] == pytest.approx(out["diff"] - half, rel=1e-9)
        assert out["ci_high"] == pytest.approx(out["diff"] + half, rel=1e-9)


def test_mean_ci_of_identical_values_has_zero_width() -> None:
    out = mean_ci([0.5, 0.5, 0.5])
    assert (out["mean"], out["std"], out["ci_low"], out["ci_high"]) == (0.5, 0.0, 0.5, 0.5)


def test_importing_analysis_leaves_scipy_stats_unimported() -> None:
    # scipy.stats takes about half a second to import; the `study` CLI imports analysis on
    # every run, so the statistics import it only when they compute.
    code = (
        "import sys, analysis; "
        "print(sorted(m for m in sys.modules if m == 'scipy' or m.startswith('scipy.')))"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert result.stdout.strip() == "[]"


def test_aggregate_seeds_per_group() -> None:
    df = pd.DataFrame(
        {
            "eps": [0.0, 0.0, 0.0, 0.5, 0.5, 1.0],
            "seed": [0, 1, 2, 0, 1, 0],
            "acc": [1.0, 2.0, 3.0, 0.4, 0.6, 0.9],
        }
    )
    out = aggregate_seeds(df, ["eps"], "acc").set_index("eps")
    assert list(out.columns) == ["mean", "std", "n", "ci_low", "ci_high"]
    assert out.loc[0.0, "ci_high"] == pytest.approx(4.484138, abs=1e-6)
    assert out.loc[0.5, "mean"] == pytest.approx(0.5)
    assert out.loc[0.5, "n"] == 2
    assert out.loc[0.5, "ci_low"] == pytest.approx(0.5 - 12.706205 * 0.1, abs=1e-6)
    assert out.loc[1.0, "n"] == 1 and math.isnan(out.loc[1.0, "ci_low"])
    assert aggregate_seeds(df.iloc[:0], ["eps"], "acc").empty


def test_aggregate_seeds_counts_distinct_seeds_not_rows() -> None:
    # One seed written three times (two drivers, or a compaction interrupted) is one seed: its
    # spread is unknown, not zero.
    one = pd.DataFrame({"eps": [0.0] * 3, "seed": [0, 0, 0], "acc": [0.7, 0.7, 0.7]})
    out = aggregate_seeds(one, ["eps"], "acc").iloc[0]
    assert out["n"] == 1 and out["mean"] == pytest.approx(0.7)
    assert math.isnan(out["std"]) and math.isnan(out["ci_low"]) and math.isnan(out["ci_high"])
    # Two seeds, with repeated rows: the rows of a seed are averaged first (seed 1: 2.0).
    two = pd.DataFrame(
        {
            "eps": [0.5] * 5,
            "seed": [0, 0, 0, 1, 1],
            "acc": [1.0, 1.0, 1.0, 1.5, 2.5],
        }
    )
    out = aggregate_seeds(two, ["eps"], "acc").iloc[0]
    # mean 1.5, sd = 0.5 * sqrt(2), se = 0.5, t_{0.975, 1} = 12.706205.
    assert out["n"] == 2
    assert out["mean"] == pytest.approx(1.5)
    assert out["std"] == pytest.approx(math.sqrt(0.5))
    assert out["ci_low"] == pytest.approx(1.5 - 12.706205 * 0.5, abs=1e-6)
    assert out["ci_high"] == pytest.approx(1.5 + 12.706205 * 0.5, abs=1e-6)
    # A NaN row of a seed is left out of its mean; a seed with only NaN rows is no seed.
    nan = float("nan")
    gaps = pd.DataFrame({"eps": [0.0] * 4, "seed": [0, 0, 1, 2], "acc": [1.0, nan, 3.0, nan]})
    out = aggregate_seeds(gaps, ["eps"], "acc").iloc[0]
    assert (out["n"], out["mean"]) == (2, 2.0)


def test_aggregate_seeds_without_a_seed_column_counts_rows() -> None:
    df = pd.DataFrame({"eps": [0.0, 0.0, 0.0], "acc": [1.0, 2.0, 3.0]})
    out = aggregate_seeds(df, ["eps"], "acc").iloc[0]
    assert (out["n"], out["mean"], out["std"]) == (3, 2.0, 1.0)
    assert out["ci_high"] == pytest.approx(4.484138, abs=1e-6)
    # Grouped by seed itself, each row of a group is one value (the seed is the group).
    by_seed = pd.DataFrame({"seed": [0, 0, 1], "acc": [1.0, 3.0, 5.0]})
    out = aggregate_seeds(by_seed, ["seed"], "acc").set_index("seed")
    assert out.loc[0, "n"] == 2 and out.loc[0, "mean"] == 2.0 and out.loc[1, "n"] == 1


def test_load_tables_reads_every_table_with_the_columns_analysis_reads(tmp_path: Path) -> None:
    build_study(tmp_path, clean=noisy({0.0: 0.9, 0.25: 0.8, 0.5: 0.7, 1.0: 0.6}, 0.01))
    tables = load_tables(tmp_path)
    assert set(tables) == {
        *("trials", "epochs", "transfer", "fisher", "robustness", "source", "inversion"),
    }
    assert len(tables["trials"]) == 12
    assert tables["trials"].groupby("eps")["test_acc_clean"].mean().to_dict() == pytest.approx(
        {0.0: 0.9, 0.25: 0.8, 0.5: 0.7, 1.0: 0.6}
    )
    assert tables["robustness"].empty
    assert {"eval_eps", "robust_acc", "attack"} <= set(tables["robustness"].columns)


def test_old_parts_without_newer_columns_read_as_nulls(tmp_path: Path) -> None:
    # Schema v1 had no attack column.
    build_study(tmp_path, eps=(0.0,), seeds=(0,))
    folder = tmp_path / "tables" / "trials"
    table = pq.read_table(folder / "part-0.parquet").drop_columns(["attack"])
    pq.write_table(
        table.replace_schema_metadata({"atsweep.schema_version": "1"}), folder / "part-0.parquet"
    )
    assert check_schema_versions(tmp_path, "trials") == 1
    trials = load_tables(tmp_path)["trials"]
    assert "attack" in trials.columns and trials["attack"].isna().all()


def test_a_part_from_a_newer_schema_is_an_error_naming_file_and_versions(tmp_path: Path) -> None:
    build_study(tmp_path, eps=(0.0,), seeds=(0,))
    path = tmp_path / "tables" / "fisher" / "part-1.parquet"
    table = pa.table({"eval_key": ["x"]}).replace_schema_metadata(
        {"atsweep.schema_version": str(KNOWN_SCHEMA_VERSION + 1)}
    )
    pq.write_table(table, path)
    with pytest.raises(SchemaVersionError) as info:
        load_tables(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert f"version {KNOWN_SCHEMA_VERSION + 1}" in message
    assert f"up to {KNOWN_SCHEMA_VERSION}" in message


def test_parts_without_a_version_count_as_version_one(tmp_path: Path) -> None:
    build_study(tmp_path, eps=(0.0,), seeds=(0,))
    folder = tmp_path / "tables" / "trials"
    table = pq.read_table(folder / "part-0.parquet").replace_schema_metadata(None)
    pq.write_table(table, folder / "part-0.parquet")
    assert check_schema_versions(tmp_path, "trials") == 1
    assert check_schema_versions(tmp_path, "transfer") == KNOWN_SCHEMA_VERSION
    assert check_schema_versions(tmp_path, "nonexistent_folder_is_empty") == 0


def test_join_trials_adds_source_accuracy_and_keeps_baselines(tmp_path: Path) -> None:
    build_study(
        tmp_path,
        eps=(0.0, 1.0),
        seeds=(0,),
        clean=lambda e, s: 0.9 - 0.1 * e,
        transfer={"cifar100": lambda e, s: 0.5 + 0.1 * e},
        raw_pixels={"cifar100": 0.3},
    )
    tables = load_tables(tmp_path)
    transfer = tables["transfer"]
    # A row whose grid columns are null is placed by its trial.
    key = trial_key(1.0, 0)
    transfer.loc[transfer["trial_key"] == key, "eps"] = np.nan
    joined = join_trials(tables["trials"], transfer)
    assert len(joined) == len(transfer)
    probe = joined[joined["trial_key"] == key].iloc[0]
    assert probe["test_acc_clean"] == pytest.approx(0.8)
    assert probe["test_acc_pgd"] == pytest.approx(0.5)
    assert probe["eps"] == 1.0
    raw = joined[joined["kind"] == "raw_pixels"].iloc[0]
    assert math.isnan(raw["test_acc_clean"]) and raw["test_acc"] == pytest.approx(0.3)


def test_write_table_helper_conforms_to_the_sink_schema(tmp_path: Path) -> None:
    from study.sinks.parquet import SCHEMAS

    path = write_table(tmp_path, "inversion", [{"eval_key": "k", "psnr": 20.0}])
    assert pq.read_schema(path).remove_metadata().equals(SCHEMAS["inversion"])
