"""Statistics over seeds, the tables of a study as DataFrames, and their schema-version check.

Confidence intervals are two-sided Student t intervals. The t quantile is computed here, without
scipy: the t CDF through the regularised incomplete beta function (the continued fraction of
Numerical Recipes, 3rd ed., section 6.4), inverted by bisection to a relative 1e-12. It is exact
for any real degrees of freedom (Welch's are fractional); tests compare it with scipy.stats.t.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.tables import TABLES, _filesystem, load_table

# The schema version of study/sinks/parquet.py this analysis was written against; the contract
# test tests/unit/analysis/test_analysis_contract.py keeps the two equal.
KNOWN_SCHEMA_VERSION = 3
VERSION_KEY = b"atsweep.schema_version"

# The grid columns that place a row: a block is (source, arch, norm, attack), a curve runs over eps.
BLOCK = ["source", "arch", "norm", "attack"]
GRID = [*BLOCK, "eps", "seed"]

# Every column analysis/ reads, per table (tables.py, stats.py, claims.py, figures.py). The
# contract test checks that each is declared in study's SCHEMAS for that table.
COLUMNS_READ: dict[str, list[str]] = {
    "trials": [
        *("trial_key", *GRID, "test_acc_clean", "test_acc_pgd", "mlflow_run_id", "proposed_by"),
    ],
    "epochs": ["trial_key", "epoch", "train_loss", "train_acc", "test_acc_clean", "test_acc_pgd"],
    "transfer": ["eval_key", "trial_key", "kind", *GRID, "target", "test_acc"],
    "fisher": [
        "eval_key",
        "trial_key",
        *GRID,
        "layer",
        "sigma",
        "weight_fisher",
        "input_trace",
        "weight_trace",
    ],
    "robustness": ["eval_key", "trial_key", *GRID, "eval_eps", "eval_attack", "robust_acc"],
    "inversion": ["eval_key", "trial_key", *GRID, "variant", "psnr", "ssim", "grid_path"],
}


class SchemaVersionError(ValueError):
    """A part written by a newer schema than this analysis knows."""


# ----- t quantile (no scipy) ---------------------------------------------------------------------
def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((a - 1.0 + m2) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df (real, > 0) degrees of freedom."""
    if df <= 0 or math.isnan(df):
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The p quantile of Student's t with df degrees of freedom (t_{0.975, 2} = 4.3027)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0 or math.isnan(df):
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df) or df > 1e7:
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 2.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


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
    """mean(a) - mean(b) with its Welch t CI (Welch-Satterthwaite degrees of freedom).

    NaN CI when either side has fewer than 2 values; a zero-width CI when both have zero spread.
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
    se = math.sqrt(va + vb)
    if se == 0.0:
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "df": math.inf}
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = t_quantile(0.5 + level / 2.0, df) * se
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "df": float(df)}


def aggregate_seeds(
    df: pd.DataFrame, by: Sequence[str], value: str, level: float = 0.95
) -> pd.DataFrame:
    """One row per group of `by`: mean, std (ddof=1), n (seeds) and the t CI of `value`.

    Rows with a NaN value are left out; null group keys form their own group.
    """
    columns = [*by, "mean", "std", "n", "ci_low", "ci_high"]
    if df.empty:
        return pd.DataFrame(columns=columns)
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


def check_schema_versions(results_dir: str | Path, name: str) -> int:
    """The newest schema version among the parts of a table (0 when none); raises
    SchemaVersionError naming the file when a part is newer than KNOWN_SCHEMA_VERSION.

    Parts without the version key predate it and count as version 1.
    """
    fs, root = _filesystem(str(results_dir))
    selector = pafs.FileSelector(f"{root}/tables/{name}", allow_not_found=True)
    newest = 0
    for info in fs.get_file_info(selector):
        if not (info.base_name.startswith("part-") and info.base_name.endswith(".parquet")):
            continue
        metadata = pq.read_schema(info.path, filesystem=fs).metadata or {}
        raw = metadata.get(VERSION_KEY, b"1")
        try:
            version = int(raw.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise SchemaVersionError(
                f"{info.path}: schema version {raw!r} is not an integer: the file was not written "
                "by atsweep's parquet sink; move it out of the table folder"
            ) from exc
        if version > KNOWN_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{info.path}: written with table schema version {version}, but this analysis "
                f"knows versions up to {KNOWN_SCHEMA_VERSION}: update atsweep (analysis/) to "
                "read this study"
            )
        newest = max(newest, version)
    return newest


def load_tables(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Every table of a study, schema versions checked, each with the columns analysis reads."""
    tables = {}
    for name in TABLES:
        check_schema_versions(results_dir, name)
        tables[name] = ensure_columns(load_table(results_dir, name), name)
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
