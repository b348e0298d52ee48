"""Checks of the paper's claims C1-C6 (PAPER.md section 1) from a study's tables, with a verdict.

scipy.stats (Welch intervals through analysis/stats.py, Spearman ranks here) is imported inside
the functions that use it, so importing analysis stays fast for the `study` CLI.

A block is one (source, arch, norm, attack); a curve is a measurement against the training eps,
with one value per seed at each eps (rows of one seed are averaged first). Every statistic comes
with a 95% CI across seeds and a verdict: "holds", "fails" or "undetermined". The rules:

- Always undetermined when some eps has fewer than 2 seeds, when there are fewer than 2 eps values
  (3 for C2), or when the CI straddles the decision boundary.
- Trend claims C1 (falls with eps) and C6 (rises with eps). Statistic: delta = mean at the
  largest eps minus mean at the smallest eps (normally 0), with the Welch t CI. Falls: holds
  iff ci_high < 0, fails iff ci_low >= 0. Rises: holds iff ci_low > 0, fails iff ci_high <= 0.
  C1 uses trials.test_acc_clean; C6 inversion.psnr and inversion.ssim per variant, the "plain"
  variant being the headline (PAPER.md section 5).
- The Fisher claims C4 (fisher.input_trace per (layer, sigma)) and C5 (fisher.weight_trace per
  weight_fisher, "true" or "empirical") on the log scale: Fisher traces span orders of magnitude
  across eps, and their spread across seeds grows with their size, so a difference of raw values
  is dominated by the largest and its CI by their spread. Statistic: ratio = geometric mean at
  the largest eps / geometric mean at the smallest, with the Welch t CI of the difference of
  the logs, exponentiated. Falls: holds iff ci_high < 1, fails iff ci_low >= 1. A curve with a
  value <= 0 cannot be logged and is checked as a difference, with a note.
- References. Every row names the reference that gives its number a meaning (columns reference
  and versus_reference): C2 the raw-pixel and random-init probes of the target (the best eps is
  compared with each by the t CI of its seeds' accuracies minus the reference: "above",
  "below" or "within CI"; a gain over eps 0 that stays below raw pixels is a recovery toward
  the pixels, not a representation that transfers better than its input, and the note says
  so); C4 and C5 the random-init network's Fisher of the same arch (fisher rows of kind
  random_init) as a multiple; C6 the no-information line: the better of the PSNR (SSIM) of
  the starting image and of the dataset's mean image against the originals. A C6 curve of
  which no eps beats its no-information line is undetermined whatever its trend: such
  reconstructions measure the optimiser, not what the representation keeps.
- Power. An undetermined trend, ratio or C2 gain row gives seeds_needed: the seeds per eps at
  which the Welch CI at the row's level would exclude the boundary with 80% probability if the
  true effect and spread were the observed ones (analysis/stats.py seeds_to_decide; a power
  estimate from a small sample, not a promise: inf when beyond 1000 seeds, empty when it
  cannot be estimated).
- C2, per target (transfer rows of kind "probe"); needs eps 0 in the grid. gain(e) = mean(e) -
  mean(0) with its Welch CI, at a Bonferroni-adjusted level 1 - 0.05/k for the k eps > 0
  (the best eps is picked from the same data, so a plain 95% CI would flatter it). Statistic
  "best_gain": gain(e*), e* the eps > 0 of largest mean. Holds iff its CI is above 0 and, when
  e* is not the largest eps (an interior peak), the curve falls after it: mean(e*) -
  mean(largest eps) has a CI above 0 (row "fall_after_peak"). A peak at the largest eps with a
  significant gain also holds (some eps > 0 beats 0), with the note that the fall is not
  observed. Fails iff gain(e) has a CI entirely below 0 for every eps > 0. Otherwise
  undetermined, so a flat curve never holds.
- C3, per block, across targets. Distance of a target from the source: d = raw-pixel probe
  accuracy - eps=0 probe accuracy (how much the standard network's features lose against raw
  pixels on that target; larger is farther), unless distances are given. Gain: the C2 best
  gain, max over eps > 0 of mean(e) - mean(0). Statistic: Spearman rank correlation of gain and
  distance across targets (scipy.stats.spearmanr, average ranks for ties; needs >= 3 targets
  with both). CI: percentile bootstrap over seeds
  (seeds resampled within each (target, eps), 2000 draws, fixed random seed). Holds iff
  ci_low > 0 and the one-sided permutation p-value over targets is <= 0.05 (exact for up to 8
  targets; 3 targets can never reach it: 1/6); fails iff ci_high < 0 with the opposite p <= 0.05.
  Caveat: both d and the gain subtract the eps=0 accuracy, so its noise correlates them; the
  bootstrap carries that noise into the CI.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from analysis.stats import (
    BLOCK,
    collapse_seeds,
    complete_tables,
    fill_block_columns,
    mean_ci,
    seeds_to_decide,
    split_fisher,
    welch_diff_ci,
)

CLAIMS = {
    "C1": "Source clean accuracy falls as the training eps grows",
    "C2": "Linear transfer improves with eps up to a point, then falls (an inverted U)",
    "C3": "The transfer gain is larger on targets far from the source",
    "C4": "The input Fisher trace of the representation falls as eps grows",
    "C5": "The weight Fisher trace falls as eps grows",
    "C6": "Inversion quality (PSNR, SSIM) rises with eps",
}
HOLDS, FAILS, UNDETERMINED = "holds", "fails", "undetermined"
RESULT_COLUMNS = [
    "claim",
    *BLOCK,
    "target",
    "setting",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "at_eps",
    "n_seeds",
    "n_eps",
    "verdict",
    "headline",
    "note",
    "reference",
    "versus_reference",
    "seeds_needed",
]
ALPHA = 0.05
BOOTSTRAP_DRAWS = 2000
EXACT_PERMUTATIONS_UP_TO = 8
Curve = dict[float, np.ndarray]


def _fewest_seeds(curve: Curve) -> int:
    return min((len(v) for v in curve.values()), default=0)


def _base(curve: Curve) -> dict[str, object]:
    nan = float("nan")
    return {
        "value": nan,
        "ci_low": nan,
        "ci_high": nan,
        "at_eps": nan,
        "n_seeds": _fewest_seeds(curve),
        "n_eps": len(curve),
    }


def check_trend(curve: Curve, direction: int, log: bool = False) -> dict[str, object]:
    """Delta (largest eps minus smallest) with its Welch CI, and the verdict for a claim that
    the value falls (direction -1) or rises (+1) with eps. With log, the ratio of geometric
    means and its CI, from the difference of the logs (every value must be > 0; else the
    difference of the values, with a note). The row's "logged" says which it is."""
    eps = sorted(curve)
    logged = log and all(bool(np.all(curve[e] > 0)) for e in eps)
    # "logged": whether the row is a ratio (on the log scale) or a difference.
    row: dict[str, object] = {**_base(curve), "seeds_needed": float("nan"), "logged": logged}
    if len(eps) < 2:
        return {**row, "verdict": UNDETERMINED, "note": "needs at least 2 eps values"}
    lo, hi = eps[0], eps[-1]
    scale = {e: np.log(curve[e]) for e in eps} if logged else curve
    d = welch_diff_ci(scale[hi], scale[lo])
    centres = [float(scale[e].mean()) for e in eps]
    steps = np.diff(centres) * direction
    shape = "monotone" if bool(np.all(steps >= 0)) else "not monotone"
    if logged:
        geo = [math.exp(c) for c in centres]
        note = (
            f"geometric mean {geo[0]:.4g} at eps={lo:g} -> {geo[-1]:.4g} at eps={hi:g} "
            f"(x{math.exp(d['diff']):.3g}, {shape}; tested on the log scale)"
        )
        value, low, high = (math.exp(d[k]) for k in ("diff", "ci_low", "ci_high"))
        boundary = 1.0
    else:
        note = f"mean {centres[0]:.4g} at eps={lo:g} -> {centres[-1]:.4g} at eps={hi:g} ({shape})"
        if log:
            note += "; a value <= 0 cannot be logged: tested as a difference"
        value, low, high = d["diff"], d["ci_low"], d["ci_high"]
        boundary = 0.0
    row.update(value=value, ci_low=low, ci_high=high, at_eps=hi)
    if _fewest_seeds(curve) < 2:
        return {**row, "verdict": UNDETERMINED, "note": f"{note}; fewer than 2 seeds at some eps"}
    if direction < 0:
        verdict = HOLDS if high < boundary else FAILS if low >= boundary else UNDETERMINED
    else:
        verdict = HOLDS if low > boundary else FAILS if high <= boundary else UNDETERMINED
    if verdict == UNDETERMINED:
        note += f"; the CI straddles {boundary:g}"
        row["seeds_needed"] = seeds_to_decide(scale[hi], scale[lo])
    return {**row, "verdict": verdict, "note": note}


def versus(values: np.ndarray, reference: float) -> str:
    """Whether values (one per seed) lie above or below a reference: by the 95% t CI of their
    mean minus it ("within CI" when it holds the reference); by the mean alone for one seed."""
    ci = mean_ci(values - reference)
    if len(values) < 2:
        return ("above" if ci["mean"] > 0 else "below") + " (1 seed)"
    return "above" if ci["ci_low"] > 0 else "below" if ci["ci_high"] < 0 else "within CI"


def _compare_best(values: np.ndarray, references: Mapping[str, float]) -> tuple[str, str, str]:
    """(reference, versus_reference, note) of C2's best eps against the transfer baselines."""
    known = {name: ref for name, ref in references.items() if not math.isnan(ref)}
    if not known:
        return "", "", ""
    found = {name: versus(values, ref) for name, ref in known.items()}
    reference = "; ".join(f"{name} {ref:.4g}" for name, ref in known.items())
    versus_text = "; ".join(f"{found[name]} {name}" for name in known)
    note = ""
    if found.get("raw pixels", "").startswith("below"):
        note = (
            f"; the best eps stays below raw pixels ({known['raw pixels']:.4g}): the "
            "representation loses to the input itself on this target, so a gain over eps 0 "
            "is a recovery toward the pixels, not a representation that transfers better"
        )
    return reference, versus_text, note


def check_inverted_u(
    curve: Curve, references: Mapping[str, float] | None = None
) -> list[dict[str, object]]:
    """C2 on one transfer curve: the "best_gain" row (the verdict) and "fall_after_peak".
    references: the baselines' accuracies on the target ("raw pixels", "random init"), which the
    best eps is compared with."""
    references = dict(references or {})
    gain_row: dict[str, object] = {
        **_base(curve),
        "statistic": "best_gain",
        "headline": True,
        "seeds_needed": float("nan"),
    }
    fall_row: dict[str, object] = {
        **_base(curve),
        "statistic": "fall_after_peak",
        "headline": False,
        "verdict": UNDETERMINED,
        "seeds_needed": float("nan"),
    }
    eps = sorted(curve)
    positive = [e for e in eps if e > 0]
    if 0.0 not in curve or not positive:
        note = "needs eps = 0 and an eps > 0 in the grid"
        return [{**gain_row, "verdict": UNDETERMINED, "note": note}, {**fall_row, "note": note}]
    level = 1.0 - ALPHA / len(positive)
    means = {e: float(curve[e].mean()) for e in eps}
    gains = {e: welch_diff_ci(curve[e], curve[0.0], level) for e in positive}
    best = max(positive, key=lambda e: (means[e], -e))
    last = eps[-1]
    interior = best < last
    g = gains[best]
    gain_row.update(value=g["diff"], ci_low=g["ci_low"], ci_high=g["ci_high"], at_eps=best)
    adjusted = (
        f"CIs at level 1 - 0.05/{len(positive)} (Bonferroni over the eps > 0)"
        if len(positive) > 1
        else "95% CIs"
    )
    if interior:
        f = welch_diff_ci(curve[best], curve[last], level)
        fall_row.update(value=f["diff"], ci_low=f["ci_low"], ci_high=f["ci_high"], at_eps=last)
        shape = f"interior peak at eps={best:g}; falls by {f['diff']:.3g} to eps={last:g}"
        falls = f["ci_low"] > 0
        fall_row.update(
            verdict=HOLDS if falls else UNDETERMINED,
            note=f"{shape}; {adjusted}" + ("" if falls else "; the CI straddles 0"),
        )
    else:
        shape = f"peak at the largest eps={best:g}: the fall after it is not observed"
        falls = True
        fall_row["note"] = f"{shape}: extend the eps grid"
    reference, versus_text, reference_note = _compare_best(curve[best], references)
    gain_row.update(reference=reference, versus_reference=versus_text)
    note = f"{shape}; mean at eps=0 {means[0.0]:.4g}, at eps={best:g} {means[best]:.4g}"
    note += f"{reference_note}; {adjusted}"
    if len(eps) < 3 or _fewest_seeds(curve) < 2:
        reason = "needs at least 3 eps values" if len(eps) < 3 else "fewer than 2 seeds at some eps"
        fall_row.update(verdict=UNDETERMINED, note=f"{fall_row['note']}; {reason}")
        return [{**gain_row, "verdict": UNDETERMINED, "note": f"{note}; {reason}"}, fall_row]
    if g["ci_low"] > 0 and falls:
        verdict = HOLDS
    elif all(gains[e]["ci_high"] < 0 for e in positive):
        verdict = FAILS
        note += "; every eps > 0 transfers worse than eps = 0"
    else:
        verdict = UNDETERMINED
        if g["ci_low"] > 0:
            note += "; the gain is significant but the fall after the peak is not"
            if interior:
                fall_row["seeds_needed"] = seeds_to_decide(curve[best], curve[last], level)
        else:
            note += "; the gain's CI straddles 0"
            gain_row["seeds_needed"] = seeds_to_decide(curve[best], curve[0.0], level)
    return [{**gain_row, "verdict": verdict, "note": note}, fall_row]


# ----- C3: gain against distance across targets --------------------------------------------------
def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation by scipy.stats.spearmanr (average ranks for ties; NaN if
    either side is constant)."""
    from scipy import stats

    with warnings.catch_warnings():
        # A constant side is an expected case here (every gain tied): the NaN says it.
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(np.asarray(x, float), np.asarray(y, float)).statistic)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each pair of matching rows of a and b (2-D, same shape): the Pearson
    correlation of the rows' average ranks, as spearmanr; NaN where a row is constant.

    Vectorised for the bootstrap's thousands of draws: each row is ranked once by
    scipy.stats.rankdata, where spearmanr on 2-D input would correlate every pair of rows.
    """
    from scipy import stats

    return _pearson_rows(stats.rankdata(a, axis=1), stats.rankdata(b, axis=1))


def permutation_p(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """One-sided p-values (positive, negative) of Spearman's rho under random pairing: exact
    for up to 8 pairs, else 20000 random permutations.

    Permuting the pairs permutes y's ranks, so both sides are ranked once (scipy.stats.rankdata)
    and every permutation costs one vectorised correlation of ranks.
    """
    from scipy import stats

    rx, ry = stats.rankdata(np.asarray(x, float)), stats.rankdata(np.asarray(y, float))
    observed = spearman(x, y)
    if np.isnan(observed):
        return float("nan"), float("nan")
    n = len(rx)
    if n <= EXACT_PERMUTATIONS_UP_TO:
        perms = np.array(list(itertools.permutations(range(n))))
        extra = 0
    else:
        rng = np.random.default_rng(seed)
        perms = np.array([rng.permutation(n) for _ in range(20000)])
        extra = 1  # the observed pairing counts as one of the permutations
    rhos = _pearson_rows(np.broadcast_to(rx, (len(perms), n)), ry[perms])
    # The tolerance makes the observed pairing (and its equals) count whatever the rounding of
    # scipy's correlation against this one.
    tol = 1e-12
    p_pos = (extra + np.sum(rhos >= observed - tol)) / (extra + len(perms))
    p_neg = (extra + np.sum(rhos <= observed + tol)) / (extra + len(perms))
    return float(p_pos), float(p_neg)


def _bootstrap_means(values: np.ndarray, rng: np.random.Generator, draws: int) -> np.ndarray:
    idx = rng.integers(0, len(values), size=(draws, len(values)))
    return values[idx].mean(axis=1)


def check_distance_gain(
    curves: Mapping[str, Curve],
    raw_pixels: Mapping[str, float],
    distances: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """C3 in one block: Spearman rho of best gain against target distance (see module doc)."""
    usable = [
        t
        for t in sorted(curves)
        if 0.0 in curves[t]
        and any(e > 0 for e in curves[t])
        and (t in distances if distances is not None else t in raw_pixels)
    ]
    skipped = sorted(set(curves) - set(usable))
    eps_counts = [len(curves[t]) for t in usable]
    n_seeds = min((_fewest_seeds(curves[t]) for t in usable), default=0)
    row: dict[str, object] = {
        "statistic": "spearman(gain, distance)",
        "value": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "at_eps": float("nan"),
        "n_seeds": n_seeds,
        "n_eps": min(eps_counts, default=0),
        "headline": True,
    }
    notes = [f"targets with a gain and a distance: {len(usable)}"]
    if skipped:
        why = "distance" if distances is not None else "raw-pixel baseline"
        notes.append(f"left out for lack of eps 0, eps > 0 or a {why}: {', '.join(skipped)}")
    if len(usable) < 3:
        notes.append("needs at least 3 targets")
        return {**row, "verdict": UNDETERMINED, "note": "; ".join(notes)}

    def gain_and_distance(
        means: Mapping[str, Mapping[float, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray]:
        gain = np.stack(
            [
                np.max([means[t][e] for e in curves[t] if e > 0], axis=0) - means[t][0.0]
                for t in usable
            ],
            axis=-1,
        )
        if distances is not None:
            dist = np.broadcast_to(np.array([distances[t] for t in usable], float), gain.shape)
        else:
            dist = np.stack([raw_pixels[t] - means[t][0.0] for t in usable], axis=-1)
        return gain, dist

    point = {t: {e: np.array([curves[t][e].mean()]) for e in curves[t]} for t in usable}
    gain, dist = gain_and_distance(point)
    rho = spearman(dist[0], gain[0])
    p_pos, p_neg = permutation_p(dist[0], gain[0], seed)
    pairs = ", ".join(
        f"{t} (d {d:.3g}, gain {g:.3g})" for t, d, g in zip(usable, dist[0], gain[0], strict=True)
    )
    kind = "given" if distances is not None else "raw-pixel acc - eps=0 probe acc"
    notes.append(f"distance = {kind}: {pairs}")
    notes.append(f"permutation p = {p_pos:.3g} (rho > 0), {p_neg:.3g} (rho < 0)")
    row["value"] = rho
    if np.isnan(rho):
        notes.append("the gains or the distances all tie: no rank correlation")
        return {**row, "verdict": UNDETERMINED, "note": "; ".join(notes)}
    if n_seeds < 2:
        notes.append("fewer than 2 seeds at some (target, eps): no CI")
        return {**row, "verdict": UNDETERMINED, "note": "; ".join(notes)}
    rng = np.random.default_rng(seed)
    boot = {
        t: {e: _bootstrap_means(curves[t][e], rng, BOOTSTRAP_DRAWS) for e in sorted(curves[t])}
        for t in usable
    }
    bgain, bdist = gain_and_distance(boot)
    rhos = spearman_rows(bdist, bgain)
    rhos = rhos[~np.isnan(rhos)]
    if len(rhos) < BOOTSTRAP_DRAWS // 2:
        notes.append("ranks tie in most bootstrap draws: no CI")
        return {**row, "verdict": UNDETERMINED, "note": "; ".join(notes)}
    low, high = np.percentile(rhos, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    row.update(ci_low=float(low), ci_high=float(high))
    if low > 0 and p_pos <= ALPHA:
        verdict = HOLDS
    elif high < 0 and p_neg <= ALPHA:
        verdict = FAILS
    else:
        verdict = UNDETERMINED
        notes.append("the CI straddles 0" if low <= 0 <= high else "too few targets for p <= 0.05")
    return {**row, "verdict": verdict, "note": "; ".join(notes)}


# ----- all claims --------------------------------------------------------------------------------
def _label(value: object) -> str:
    """A setting value as text: "" for null, floats as %g."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


# A trend row's reference: (block, setting values, curve) -> the reference, versus_reference
# and note columns, and a verdict that overrides the trend's (or None).
Reference = Callable[[Mapping[str, object], Mapping[str, str], Curve], dict[str, object]]


def _trend_rows(
    claim: str,
    df: pd.DataFrame,
    value: str,
    direction: int,
    setting_columns: list[str],
    headline: str | None = None,
    log: bool = False,
    reference: Reference | None = None,
) -> list[dict[str, object]]:
    if df.empty:
        return []
    df = fill_block_columns(df)
    for column in setting_columns:
        df[column] = [_label(v) for v in df[column]]
    rows = []
    for key, curve in collapse_seeds(df, [*BLOCK, *setting_columns], value).items():
        block = dict(zip(BLOCK, key[: len(BLOCK)], strict=True))
        parts = {c: str(v) for c, v in zip(setting_columns, key[len(BLOCK) :], strict=True)}
        setting = ", ".join(f"{name}={v}" for name, v in parts.items() if v != "")
        is_headline = headline is None or parts.get("variant") == headline
        row = {
            "claim": claim,
            **block,
            "target": "",
            "setting": setting,
            "statistic": f"ratio_{value}" if log else f"delta_{value}",
            "headline": is_headline,
            **check_trend(curve, direction, log),
        }
        if not row.pop("logged"):
            row["statistic"] = f"delta_{value}"
        if reference is not None:
            found = reference(block, parts, curve)
            row["reference"] = found.get("reference", "")
            row["versus_reference"] = found.get("versus_reference", "")
            row["note"] = f"{row['note']}{found.get('note', '')}"
            if found.get("verdict") is not None:
                row["verdict"] = found["verdict"]
                row["seeds_needed"] = float("nan")
        rows.append(row)
    return rows


def _matching(
    df: pd.DataFrame, block: Mapping[str, object], parts: Mapping[str, str]
) -> pd.DataFrame:
    """The rows of df in a block (by source and arch) with the given setting values."""
    keep = (df["source"].astype(str) == str(block["source"])) & (
        df["arch"].astype(str) == str(block["arch"])
    )
    for column, label in parts.items():
        keep &= df[column].map(_label) == label
    return df[keep]


def fisher_reference(random_init: pd.DataFrame, value: str) -> Reference:
    """C4/C5's reference: the Fisher of the untrained network of the block's source and arch
    (mean over its seeds), with the smallest and largest eps as multiples of it."""

    def reference(
        block: Mapping[str, object], parts: Mapping[str, str], curve: Curve
    ) -> dict[str, object]:
        rows = _matching(random_init, block, parts) if not random_init.empty else random_init
        base = float(rows[value].astype(float).mean()) if not rows.empty else math.nan
        if math.isnan(base) or base <= 0:
            return {}
        eps = sorted(curve)
        lo, hi = float(curve[eps[0]].mean()), float(curve[eps[-1]].mean())
        return {
            "reference": f"random init {base:.4g}",
            "versus_reference": f"x{lo / base:.3g} at eps={eps[0]:g}, x{hi / base:.3g} at "
            f"eps={eps[-1]:g}",
        }

    return reference


def inversion_reference(inversion: pd.DataFrame, value: str) -> Reference:
    """C6's reference: the no-information line, the better of the starting image's and the mean
    image's PSNR (SSIM) against the originals; a curve that never beats it is undetermined."""

    def reference(
        block: Mapping[str, object], parts: Mapping[str, str], curve: Curve
    ) -> dict[str, object]:
        rows = _matching(inversion, block, parts)
        lines = {
            name: float(rows[column].astype(float).mean())
            for name, column in (("mean image", f"mean_image_{value}"), ("start", f"start_{value}"))
        }
        lines = {name: v for name, v in lines.items() if not math.isnan(v)}
        if not lines:
            return {}
        name = max(lines, key=lambda n: lines[n])
        line = lines[name]
        above = [e for e in sorted(curve) if float(curve[e].mean()) > line]
        last = max(curve)
        found: dict[str, object] = {
            "reference": "; ".join(f"{n} {v:.4g}" for n, v in lines.items()),
            "versus_reference": f"{versus(curve[last], line)} the {name} at eps={last:g}",
        }
        if above:
            where = ", ".join(f"{e:g}" for e in above)
            found["note"] = f"; beats the no-information line ({name} {line:.4g}) at eps={where}"
        else:
            found["note"] = (
                f"; no eps beats the no-information line ({name} {line:.4g}) on average: these "
                "reconstructions do not show that the representation keeps more of the image "
                "than the dataset's mean, so their trend measures the optimiser, not the "
                "representation"
            )
            found["verdict"] = UNDETERMINED
        return found

    return reference


def _transfer_references(
    transfer: pd.DataFrame, block: Mapping[str, object], target: str
) -> dict[str, float]:
    """The raw-pixel and random-init (the block's source and arch) probe accuracies on a target:
    means over their rows, NaN where the study has none."""
    raw = transfer[(transfer["kind"] == "raw_pixels") & (transfer["target"] == target)]
    rand = transfer[
        (transfer["kind"] == "random_init")
        & (transfer["target"] == target)
        & (transfer["source"] == block["source"])
        & (transfer["arch"] == block["arch"])
    ]
    return {
        "raw pixels": float(raw["test_acc"].astype(float).mean()),
        "random init": float(rand["test_acc"].astype(float).mean()),
    }


def check_claims(
    tables: Mapping[str, pd.DataFrame], target_distance: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """Every claim C1-C6 on every block of a study (tables as from load_tables), as a tidy
    DataFrame with RESULT_COLUMNS. target_distance overrides C3's computed distances."""
    t = complete_tables(tables)
    rows: list[dict[str, object]] = []
    rows += _trend_rows("C1", t["trials"], "test_acc_clean", -1, [])

    transfer = t["transfer"]
    probes = (
        fill_block_columns(transfer[transfer["kind"] == "probe"]) if not transfer.empty else None
    )
    if probes is not None and not probes.empty:
        raw = transfer[transfer["kind"] == "raw_pixels"].groupby("target")["test_acc"].mean()
        curves = collapse_seeds(probes, [*BLOCK, "target"], "test_acc")
        by_block: dict[tuple[object, ...], dict[str, Curve]] = {}
        for key, curve in curves.items():
            block = dict(zip(BLOCK, key[: len(BLOCK)], strict=True))
            target = str(key[-1])
            by_block.setdefault(key[: len(BLOCK)], {})[target] = curve
            for r in check_inverted_u(curve, _transfer_references(transfer, block, target)):
                rows.append({"claim": "C2", **block, "target": target, "setting": "", **r})
        for key, block_curves in by_block.items():
            block = dict(zip(BLOCK, key, strict=True))
            r = check_distance_gain(block_curves, raw.dropna().to_dict(), target_distance)
            rows.append({"claim": "C3", **block, "target": "", "setting": "", **r})

    fisher, random_init = split_fisher(t["fisher"])
    for claim, value, settings in (
        ("C4", "input_trace", ["layer", "sigma"]),
        ("C5", "weight_trace", ["weight_fisher"]),
    ):
        reference = fisher_reference(random_init, value)
        rows += _trend_rows(claim, fisher, value, -1, settings, log=True, reference=reference)
    inversion = t["inversion"]
    variants = sorted(inversion["variant"].dropna().astype(str).unique())
    headline = "plain" if "plain" in variants else (variants[0] if variants else None)
    for value in ("psnr", "ssim"):
        reference = inversion_reference(inversion, value)
        rows += _trend_rows("C6", inversion, value, +1, ["variant"], headline, reference=reference)
    out = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if out.empty:
        return out
    order = {"C1": 1, "C2": 2, "C3": 3, "C4": 4, "C5": 5, "C6": 6}
    out["_order"] = out["claim"].map(order)
    out["_headline"] = ~out["headline"].astype(bool)
    out = out.sort_values(
        ["_order", *BLOCK, "target", "_headline", "setting", "statistic"], kind="stable"
    )
    return out.drop(columns=["_order", "_headline"]).reset_index(drop=True)


def _number(value: object) -> str:
    if not isinstance(value, (int, float, np.number)) or pd.isna(value):
        return ""
    return f"{float(value):.4g}"


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _seeds(value: object) -> str:
    """seeds_needed as text: empty when not estimated, "> 1000" beyond the search."""
    if not isinstance(value, (int, float, np.number)) or math.isnan(float(value)):
        return ""
    return "> 1000" if math.isinf(float(value)) else str(int(value))


def format_claims(claims: pd.DataFrame) -> str:
    """The claim checks as markdown: per claim, a verdict count over headline rows and a table."""
    if claims.empty:
        return "(no claim can be checked: the study has no finished trials yet)"
    out = []
    headers = ["source", "arch", "norm", "attack", "target / setting", "statistic", "value"]
    headers += ["95% CI", "at eps", "seeds", "eps", "verdict", "reference", "vs reference"]
    headers += ["seeds needed", "note"]
    for claim, rows in claims.groupby("claim", sort=True):
        heads = rows[rows["headline"].astype(bool)]
        counts = heads["verdict"].value_counts()
        tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in (HOLDS, FAILS, UNDETERMINED))
        out += [f"### {claim}: {CLAIMS[str(claim)]}", "", f"Headline rows: {tally}.", ""]
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" for _ in headers) + "|")
        for _, r in rows.iterrows():
            where = " / ".join(str(x) for x in (r["target"], r["setting"]) if x)
            ci = ""
            if not (pd.isna(r["ci_low"]) or pd.isna(r["ci_high"])):
                ci = f"[{_number(r['ci_low'])}, {_number(r['ci_high'])}]"
            verdict = f"**{r['verdict']}**" if r["headline"] else str(r["verdict"])
            cells = [str(r[c]) for c in BLOCK] + [where, str(r["statistic"]), _number(r["value"])]
            cells += [ci, _number(r["at_eps"]), str(r["n_seeds"]), str(r["n_eps"]), verdict]
            cells += [_text(r["reference"]), _text(r["versus_reference"])]
            cells += [_seeds(r["seeds_needed"]), str(r["note"])]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
