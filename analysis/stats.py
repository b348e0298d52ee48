"""Statistics over seeds, and the tables of a study as DataFrames with the columns analysis reads.

Confidence intervals are two-sided Student t intervals from scipy.stats: the t quantile is
scipy.stats.t.ppf (exact for real degrees of freedom; Welch's are fractional) and the interval of
a difference of means is scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval (Welch,
with Welch-Satterthwaite degrees of freedom). scipy.stats is imported inside the functions that
use it, not with this module: the `study` CLI imports analysis on every run and scipy.stats takes
about half a second to import.

The tables are read by analysis/tables.py's load_table, which checks each part's schema version
and reads each row once: a compaction's replaced parts are skipped, rows whose key repeats are
left out with a warning. Statistics over seeds (aggregate_seeds, collapse_seeds) average the rows
of one seed first, so n is the number of distinct seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

# The schema-version names are re-exported here, where they were defined before load_table took
# over the check, so `from analysis.stats import SchemaVersionError` keeps working.
from analysis.tables import KNOWN_SCHEMA_VERSION as KNOWN_SCHEMA_VERSION
from analysis.tables import TABLES, drop_superseded, fill_source_accuracy, load_table
from analysis.tables import VERSION_KEY as VERSION_KEY
from analysis.tables import SchemaVersionError as SchemaVersionError
from analysis.tables import check_schema_versions as check_schema_versions
from analysis.tables import split_fisher as split_fisher

# The grid columns that place a row: a block is (source, arch, norm, attack), a curve runs over eps.
BLOCK = ["source", "arch", "norm", "attack"]
GRID = [*BLOCK, "eps", "seed"]

# Every column analysis/ reads, per table (tables.py, stats.py, claims.py, figures.py). The
# contract test checks that each is declared in study's SCHEMAS for that table.
COLUMNS_READ: dict[str, list[str]] = {
    "trials": [
        *("trial_key", *GRID, "test_acc_clean", "test_acc_pgd", "mlflow_run_id", "proposed_by"),
        *("config_json", "completed_at"),
    ],
    "epochs": ["trial_key", "epoch", "train_loss", "train_acc", "test_acc_clean", "test_acc_pgd"],
    "transfer": ["eval_key", "trial_key", "kind", *GRID, "target", "test_acc"],
    "fisher": [
        "eval_key",
        "trial_key",
        "kind",
        *GRID,
        "layer",
        "sigma",
        "weight_fisher",
        "input_trace",
        "weight_trace",
    ],
    "robustness": ["eval_key", "trial_key", *GRID, "eval_eps", "eval_attack", "robust_acc"],
    "source": ["eval_key", "trial_key", *GRID, "test_acc_clean", "test_acc_pgd"],
    "inversion": [
        *("eval_key", "trial_key", *GRID, "variant", "psnr", "ssim", "grid_path"),
        *("relative_error", "start_psnr", "start_ssim", "mean_image_psnr", "mean_image_ssim"),
        *("final_improvement", "converged"),
    ],
}


# ----- t quantile --------------------------------------------------------------------------------
@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The p quantile of Student's t with df (real, > 0; inf for the normal) degrees of freedom
    (t_{0.975, 2} = 4.3027), by scipy.stats.t.ppf."""
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"p must be in (0, 1), got {p}: pass a probability, e.g. 0.975 for the upper end "
            "of a two-sided 95% interval"
        )
    if df <= 0 or math.isnan(df):
        raise ValueError(
            f"degrees of freedom must be > 0, got {df}: a t interval needs at least 2 values"
        )
    from scipy import stats

    return float(stats.t.ppf(p, df))


# ----- means, confidence intervals and differences over seeds ------------------------------------
def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean, std (ddof=1), n and the Student t CI of the mean of the non-NaN values.

    With n = 1 the std and the CI are NaN: one seed says nothing about the spread.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "std": nan, "n": 0, "ci_low": nan, "ci_high": nan}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": nan, "n": 1, "ci_low": nan, "ci_high": nan}
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def welch_diff_ci(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = 0.95
) -> dict[str, float]:
    """mean(a) - mean(b) of the non-NaN values with its Welch t CI and degrees of freedom.

    The CI is scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(level); its df is
    the Welch-Satterthwaite one. NaN CI and df when either side has fewer than 2 values; a
    zero-width CI with df inf when both have zero spread.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    nan = float("nan")
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else nan
    out = {"diff": diff, "ci_low": nan, "ci_high": nan, "df": nan}
    if len(x) < 2 or len(y) < 2:
        return out
    va, vb = float(x.var(ddof=1)) / len(x), float(y.var(ddof=1)) / len(y)
    if va + vb == 0.0:
        # No spread on either side: the difference is known exactly (scipy would give a
        # zero-width interval too, but with a meaningless df).
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "df": math.inf}
    from scipy import stats

    with warnings.catch_warnings():
        # Seeds that agree to the last digits (one accuracy on a small test set) make scipy warn
        # of precision loss in the variance; the interval is the one the variance gives.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        result = stats.ttest_ind(x, y, equal_var=False)
    ci = result.confidence_interval(confidence_level=level)
    return {
        "diff": diff,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "df": float(result.df),
    }


def aggregate_seeds(
    df: pd.DataFrame, by: Sequence[str], value: str, level: float = 0.95
) -> pd.DataFrame:
    """One row per group of `by`: mean, std (ddof=1), n (seeds) and the t CI of `value`.

    When df has a "seed" column, the rows of one seed in a group are averaged first, so the
    statistics are over distinct seeds: n counts seeds, never rows (rows repeated by two drivers
    writing one study, or several evaluations of one trial, would otherwise pass for seeds, with
    a std of 0 and a zero-width CI). A null seed counts as one seed, as in collapse_seeds.
    Without a seed column each row counts as one value. Rows with a NaN value are left out;
    null group keys form their own group.
    """
    columns = [*by, "mean", "std", "n", "ci_low", "ci_high"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    if "seed" in df.columns and "seed" not in by:
        # mean() skips NaN values, and a seed with none left is NaN, which mean_ci drops.
        # (float first: a column of an older part may be an all-null object column.)
        per_seed = df[[*by, "seed"]].assign(**{value: df[value].to_numpy(float)})
        df = per_seed.groupby([*by, "seed"], dropna=False, sort=True)[value].mean().reset_index()
    rows = []
    for key, sub in df.groupby(list(by), dropna=False, sort=True):
        keys = key if isinstance(key, tuple) else (key,)
        rows.append(
            {**dict(zip(by, keys, strict=True)), **mean_ci(sub[value].to_numpy(float), level)}
        )
    return pd.DataFrame(rows, columns=columns)


# ----- the tables of a study ---------------------------------------------------------------------
def ensure_columns(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """A copy of df holding every column analysis reads from table `name` (absent ones as NA).

    Parts of an older schema lack newer columns (schema v1 had no `attack`); empty tables have
    no columns at all.
    """
    out = df.copy()
    for column in COLUMNS_READ[name]:
        if column not in out.columns:
            out[column] = pd.Series([None] * len(out), index=out.index, dtype=object)
    return out


def load_tables(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Every table of a study, each with the columns analysis reads.

    Read by load_table, so a part from a newer schema version raises SchemaVersionError naming
    the file, and each row is read once (duplicate keys left out with a DuplicateRowsWarning);
    a measurement taken again under other settings counts once, the latest (drop_remeasured).
    """
    tables = drop_superseded(
        {name: ensure_columns(load_table(results_dir, name), name) for name in TABLES}
    )
    # An imported network's source accuracy is an evaluation: it joins its trials row here.
    tables["trials"] = fill_source_accuracy(tables["trials"], tables["source"])
    return tables


def join_trials(
    trials: pd.DataFrame,
    evaluation: pd.DataFrame,
    columns: Sequence[str] = ("test_acc_clean", "test_acc_pgd"),
) -> pd.DataFrame:
    """The evaluation rows with their trial's `columns` joined on trial_key (a left join).

    Grid columns come from the evaluation row and, where it has nulls, from the trial. Baseline
    rows (trial_key null) keep NaN in the joined columns.
    """
    trials = ensure_columns(trials, "trials")
    out = evaluation.copy()
    for column in ("trial_key", *GRID):
        if column not in out.columns:
            out[column] = pd.Series([None] * len(out), index=out.index, dtype=object)
    right = trials[["trial_key", *GRID, *columns]].drop_duplicates("trial_key")
    right = right[right["trial_key"].notna()]
    right = right.rename(columns={c: f"{c}__trial" for c in [*GRID, *columns]})
    merged = out.merge(right, on="trial_key", how="left", validate="many_to_one")
    for column in GRID:
        merged[column] = merged[column].where(merged[column].notna(), merged[f"{column}__trial"])
    for column in columns:
        merged[column] = merged[f"{column}__trial"]
    return merged.drop(columns=[f"{c}__trial" for c in [*GRID, *columns]])


def collapse_seeds(
    df: pd.DataFrame, keys: Sequence[str], value: str
) -> dict[tuple[object, ...], dict[float, np.ndarray]]:
    """Per group of `keys`: eps -> the values of each seed (the rows of one seed averaged first,
    so n counts seeds). Rows with a NaN value or eps are left out."""
    out: dict[tuple[object, ...], dict[float, np.ndarray]] = {}
    if df.empty:
        return out
    sub = df[df[value].notna() & df["eps"].notna()]
    per_seed = sub.groupby([*keys, "eps", "seed"], dropna=False, sort=True)[value].mean()
    for index, values in per_seed.groupby(level=list(range(len(keys) + 1)), sort=True):
        index = index if isinstance(index, tuple) else (index,)
        key, eps = tuple(index[: len(keys)]), float(index[len(keys)])
        out.setdefault(key, {})[eps] = values.to_numpy(dtype=float)
    return out


def fill_block_columns(df: pd.DataFrame) -> pd.DataFrame:
    """df with null block columns as "" (schema v1 had no attack), so they group and print."""
    out = df.copy()
    for column in BLOCK:
        out[column] = out[column].astype(object).where(out[column].notna(), "").astype(str)
    return out


def complete_tables(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables with every column analysis reads (missing tables as empty ones)."""
    return {name: ensure_columns(tables.get(name, pd.DataFrame()), name) for name in COLUMNS_READ}


# ----- power --------------------------------------------------------------------------------------
# The power at which seeds_to_decide counts, and the most seeds it looks at.
POWER = 0.8
MAX_SEEDS = 1000


def welch_power(diff: float, sd_a: float, sd_b: float, n: int, level: float) -> float:
    """The chance that a Welch CI at `level`, with n values on each side, excludes 0 when the true
    difference of means is diff and the sides' standard deviations are sd_a and sd_b (the
    noncentral t, scipy.stats.nct, with Welch-Satterthwaite degrees of freedom)."""
    from scipy import stats

    va, vb = sd_a**2 / n, sd_b**2 / n
    df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
    # The power is symmetric in the sign of the difference: the near tail (the CI excludes 0 on
    # the side of the true difference) and the far one. scipy's noncentral t returns NaN in a
    # far tail at a large noncentrality (the far tail is then below 1e-15: 0) and may in the
    # near one (then the normal approximation, exact to that precision there).
    delta = abs(diff) / math.sqrt(va + vb)
    crit = float(stats.t.ppf(1.0 - (1.0 - level) / 2, df))
    near = float(stats.nct.sf(crit, df, delta))
    if not math.isfinite(near):
        near = float(stats.norm.sf(crit - delta))
    far = float(stats.nct.cdf(-crit, df, delta))
    return near + (far if math.isfinite(far) else 0.0)


def seeds_to_decide(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    level: float = 0.95,
    power: float = POWER,
) -> float:
    """A power estimate: the fewest seeds per side at which the Welch CI of mean(a) - mean(b) at
    `level` excludes 0 with probability `power`, if the true difference and spreads are the
    observed ones. NaN when it cannot be estimated (fewer than 2 values on a side, no observed
    difference, or no spread), inf beyond MAX_SEEDS."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    diff = float(x.mean() - y.mean())
    sd_a, sd_b = float(x.std(ddof=1)), float(y.std(ddof=1))
    if diff == 0.0 or sd_a + sd_b == 0.0 or not math.isfinite(diff):
        return float("nan")
    if welch_power(diff, sd_a, sd_b, MAX_SEEDS, level) < power:
        return math.inf
    low, high = 2, MAX_SEEDS  # the power grows with n: bisect for the first n that reaches it
    while low < high:
        mid = (low + high) // 2
        if welch_power(diff, sd_a, sd_b, mid, level) >= power:
            high = mid
        else:
            low = mid + 1
    return float(low)
