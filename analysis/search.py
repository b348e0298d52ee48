"""Multi-objective searches (Optuna) next to grids: Pareto fronts, hypervolumes and a figure.

A search study writes every trial to the same `trials` and `transfer` tables as a grid study; the
trials table's optional `proposed_by` column says what proposed each trial ("grid", or a sampler
such as "optuna:nsga2"). Tables without the column, and rows where it is null or empty, count as
"grid".

Objectives are named as columns of one row per trial:

- "test_acc_clean", "test_acc_pgd": the trial's source test accuracy, clean and under PGD;
- "transfer:<target>": the mean linear-probe test accuracy of the trial on <target> (the
  transfer table's rows of kind "probe").

Directions are given per objective (`maximize`, True for "higher is better"); internally every
objective is turned into one to minimise by negating the maximised ones.

Dominance (the usual, weak, definition): row a dominates row b when a is at least as good as b on
every objective and strictly better on at least one. Fronts are taken by analysis/pareto.py's
pareto_front (re-exported here), whose rule for ties and duplicates the trade-off figure follows
too. Rows holding a NaN objective are left out of fronts and hypervolumes (they neither dominate
nor are dominated).

Fronts, hypervolumes and summaries are taken over the rows as given: filter the tables to one
(source, arch, norm) block first when a study holds several.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, SymLogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figures import STYLE, _eps_label, _save
from analysis.pareto import _as_points, _front_min, _signs, pareto_front
from analysis.stats import complete_tables

GRID_PROPOSER = "grid"
TRANSFER_PREFIX = "transfer:"
SOURCE_OBJECTIVES = ("test_acc_clean", "test_acc_pgd")
POINT_COLUMNS = ["trial_key", "source", "arch", "norm", "attack", "eps", "seed", "proposed_by"]


# ----- hypervolume -------------------------------------------------------------------------------
def _hv2(q: np.ndarray, r: np.ndarray) -> float:
    """Area dominated by q (n x 2, minimised, each row < r) up to r: a sweep over the first
    objective, O(n log n)."""
    order = np.lexsort((q[:, 1], q[:, 0]))
    area, best = 0.0, float(r[1])
    for x, y in q[order]:
        if y < best:
            # The points before this one have x' <= x, so above x they already cover [best, r1].
            area += (float(r[0]) - x) * (best - y)
            best = float(y)
    return area


def _hv(q: np.ndarray, r: np.ndarray) -> float:
    """Exact hypervolume of q (n x m, minimised, each row < r) up to r, by slicing (HSO)."""
    n, m = q.shape
    if n == 0:
        return 0.0
    if m == 1:
        return float(r[0] - q[:, 0].min())
    if m == 2:
        return _hv2(q, r)
    # Slabs along the last objective: between its k-th and (k+1)-th smallest value, the volume is
    # the (m-1)-dimensional hypervolume of the first k+1 points' other objectives.
    q = q[np.argsort(q[:, -1], kind="stable")]
    bounds = np.append(q[:, -1], r[-1])
    total = 0.0
    for k in range(n):
        depth = float(bounds[k + 1] - bounds[k])
        if depth > 0:
            prefix = q[: k + 1, :-1]
            if m > 3:  # fewer points in the recursion; the 2-D sweep skips dominated ones itself
                prefix = prefix[_front_min(prefix, unique=True)]
            total += depth * _hv(prefix, r[:-1])
    return total


def hypervolume(
    points: np.ndarray | Sequence[Sequence[float]],
    reference: np.ndarray | Sequence[float],
    maximize: Sequence[bool] | bool,
) -> float:
    """The exact volume of the objective space the points dominate, bounded by `reference`.

    That is the Lebesgue measure of the union over points p of the boxes between p and the
    reference point (for maximised objectives [r_k, p_k], for minimised ones [p_k, r_k]). Points
    that do not strictly dominate the reference (not strictly better on every objective) and rows
    holding a NaN contribute nothing; with none left the hypervolume is 0. Adding dominated or
    duplicate points never changes it.

    Algorithm: the points are reduced to their Pareto front; 2 objectives by a sweep over the
    first (O(n log n)); 3 or more by slicing the last objective (HSO, "hypervolume by slicing
    objectives", While et al. 2006): sort by it, and between consecutive values multiply the slab's
    depth by the (m-1)-objective hypervolume of the points below it, recursively down to the 2-D
    sweep. O(n^(m-1) log n) time: n = 200 points take well under a second in 3-D and seconds in
    4-D; use a dedicated library (e.g. WFG) for large fronts of many objectives.
    """
    p = _as_points(points)
    r = np.asarray(reference, dtype=float).reshape(-1)
    if p.shape[0] == 0:
        return 0.0
    m = p.shape[1]
    if len(r) != m:
        raise ValueError(f"reference has {len(r)} values for {m} objectives")
    if np.isnan(r).any():
        raise ValueError(f"reference holds NaN: {r.tolist()}")
    signs = _signs(maximize, m)
    q, rq = p * signs, r * signs
    q = q[~np.isnan(q).any(axis=1)]
    q = q[np.all(q < rq, axis=1)]
    if len(q) == 0:
        return 0.0
    return float(_hv(q[_front_min(q, unique=True)], rq))


# ----- objectives from a study's tables ----------------------------------------------------------
def _check_objectives(objectives: Sequence[str]) -> list[str]:
    names = [objectives] if isinstance(objectives, str) else list(objectives)
    if not names:
        raise ValueError("no objectives given")
    if len(set(names)) != len(names):
        raise ValueError(f"objectives repeat a name: {names}")
    for name in names:
        target = name[len(TRANSFER_PREFIX) :] if name.startswith(TRANSFER_PREFIX) else None
        if name not in SOURCE_OBJECTIVES and not target:
            raise ValueError(
                f"unknown objective {name!r}: use {', '.join(SOURCE_OBJECTIVES)} or "
                f"{TRANSFER_PREFIX}<target>"
            )
    return names


def _proposed_by(trials: pd.DataFrame) -> pd.Series:
    """The trials' proposer, "grid" where the column is absent, null or empty."""
    if "proposed_by" not in trials.columns:
        return pd.Series(GRID_PROPOSER, index=trials.index, dtype=object)
    raw = trials["proposed_by"].astype(object)
    text = raw.where(raw.notna(), "").astype(str).str.strip()
    return text.where(text != "", GRID_PROPOSER)


def objective_points(tables: Mapping[str, pd.DataFrame], objectives: Sequence[str]) -> pd.DataFrame:
    """One row per trial (trial_key) with its objectives as columns named as given.

    Columns: trial_key, source, arch, norm, attack, eps, seed, proposed_by, then the objectives in
    the given order. A trial_key listed twice in the trials table keeps its first row; rows without
    a trial_key are left out. "transfer:<target>" is the mean test_acc of the trial's probe rows of
    that target (NaN when it has none, as when a probe has not finished yet); the other
    objectives are the trials table's columns. Rows keep NaN objectives (fronts and hypervolumes
    leave them out). Sorted by proposed_by, then eps, seed and trial_key.

    Raises ValueError for an unknown or repeated objective name.
    """
    names = _check_objectives(objectives)
    t = complete_tables(tables)
    trials = t["trials"]
    trials = trials[trials["trial_key"].notna()].drop_duplicates("trial_key")
    out = trials[POINT_COLUMNS[:-1]].copy()
    out["trial_key"] = out["trial_key"].astype(str)
    out["eps"] = pd.to_numeric(out["eps"], errors="coerce").astype(float)
    out["proposed_by"] = _proposed_by(trials)
    transfer = t["transfer"]
    probes = transfer[
        (transfer["kind"] == "probe") & transfer["trial_key"].notna() & transfer["test_acc"].notna()
    ]
    for name in names:
        if name.startswith(TRANSFER_PREFIX):
            target = name[len(TRANSFER_PREFIX) :]
            rows = probes[probes["target"].astype(str) == target]
            means = rows.groupby(rows["trial_key"].astype(str))["test_acc"].mean()
            out[name] = out["trial_key"].map(means).astype(float)
        else:
            out[name] = pd.to_numeric(trials[name], errors="coerce").astype(float)
    out = out.sort_values(["proposed_by", "eps", "seed", "trial_key"], kind="stable")
    return out.reset_index(drop=True)


def search_summary(
    tables: Mapping[str, pd.DataFrame],
    objectives: Sequence[str],
    reference: Sequence[float],
    maximize: Sequence[bool] | bool,
) -> pd.DataFrame:
    """Per proposed_by group (sorted): how many trials, how many with every objective, the size of
    the group's own Pareto front and its hypervolume relative to `reference`.

    Columns: proposed_by, trials, complete, front_size, hypervolume. Duplicate trials on the front
    all count in front_size (see pareto_front); the hypervolume counts them once.
    """
    names = _check_objectives(objectives)
    points = objective_points(tables, names)
    rows = []
    for proposer, sub in points.groupby("proposed_by", sort=True):
        values = sub[names].to_numpy(float)
        rows.append(
            {
                "proposed_by": str(proposer),
                "trials": len(sub),
                "complete": int((~np.isnan(values).any(axis=1)).sum()),
                "front_size": len(pareto_front(values, maximize)),
                "hypervolume": hypervolume(values, reference, maximize),
            }
        )
    columns = ["proposed_by", "trials", "complete", "front_size", "hypervolume"]
    return pd.DataFrame(rows, columns=columns)


# ----- figure ------------------------------------------------------------------------------------
def _objective_label(name: str) -> str:
    if name == "test_acc_clean":
        return "source clean test accuracy (fraction)"
    if name == "test_acc_pgd":
        return "source PGD test accuracy at the training ε (fraction)"
    return f"linear-probe accuracy on {name[len(TRANSFER_PREFIX) :]} (fraction)"


def _staircase(front: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The boundary of the region the front dominates, as the vertices of a step line."""
    q = front * signs
    q = q[np.lexsort((q[:, 1], q[:, 0]))]
    xs, ys = [q[0, 0]], [q[0, 1]]
    for x, y in q[1:]:
        xs += [x, x]
        ys += [ys[-1], y]
    return np.asarray(xs) * signs[0], np.asarray(ys) * signs[1]


def _eps_norm(eps: np.ndarray) -> Normalize:
    """A colour scale of eps, symmetric-log when it spans over 1.5 decades."""
    low, high = (float(eps.min()), float(eps.max())) if len(eps) else (0.0, 1.0)
    high = high if high > low else low + 1.0
    positive = eps[eps > 0]
    if len(positive) and positive.max() / positive.min() > 30:
        return SymLogNorm(linthresh=float(positive.min()), vmin=low, vmax=high)
    return Normalize(vmin=low, vmax=high)


def plot_search_vs_grid(
    tables_search: Mapping[str, pd.DataFrame],
    tables_grid: Mapping[str, pd.DataFrame],
    objectives: Sequence[str],
    out_dir: str | Path,
    maximize: Sequence[bool] | bool = (True, True),
    reference: Sequence[float] | None = None,
    names: tuple[str, str] = ("search", "grid"),
) -> list[Path]:
    """Two objectives of every trial of a search study and of a grid study on the same axes.

    One point per trained network, coloured by its training eps (colour bar), circles for the
    search and squares for the grid; each study's Pareto front as a step line (the boundary of
    the region it dominates), its points annotated with their eps; the legend gives each study's
    trial count and hypervolume relative to `reference` (default: 0 for a maximised objective
    and 1 for a minimised one, the worst accuracy). Trials lacking an objective are left out.
    Writes search_vs_grid-<objectives>.png and .svg under out_dir and returns their paths, or []
    when neither study has a trial with both objectives.
    """
    objs = _check_objectives(objectives)
    if len(objs) != 2:
        raise ValueError(f"plot_search_vs_grid takes 2 objectives, got {len(objs)}: {objs}")
    signs = _signs(maximize, 2)
    ref = np.where(signs < 0, 0.0, 1.0) if reference is None else np.asarray(reference, dtype=float)
    studies = []
    for label, tables in zip(names, (tables_search, tables_grid), strict=True):
        pts = objective_points(tables, objs).dropna(subset=objs)
        studies.append((label, pts))
    if all(pts.empty for _, pts in studies):
        return []
    every = pd.concat([pts for _, pts in studies if not pts.empty])
    eps_all = every["eps"].dropna().to_numpy(float)
    color_norm = _eps_norm(eps_all)
    norms = sorted(every["norm"].dropna().astype(str).unique())
    markers = ("o", "s")
    front_styles = (("C3", "-"), ("0.2", "--"))
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.4, 5.2), layout="constrained")
        ax = fig.subplots()
        handles: list[Line2D] = []
        mappable = None
        for s, (label, pts) in enumerate(studies):
            # Hollow proxies in the legend: the marker says which study, the colour bar says eps.
            handles.append(
                Line2D(
                    [],
                    [],
                    marker=markers[s],
                    linestyle="none",
                    markerfacecolor="white",
                    markeredgecolor="0.15",
                    label=f"{label}: trials (n={len(pts)})",
                )
            )
            if pts.empty:
                continue
            values = pts[objs].to_numpy(float)
            eps = pts["eps"].to_numpy(float)
            mappable = ax.scatter(
                values[:, 0],
                values[:, 1],
                c=np.nan_to_num(eps, nan=0.0),
                cmap="viridis",
                norm=color_norm,
                marker=markers[s],
                s=30,
                edgecolors="0.15",
                linewidths=0.5,
                alpha=0.85,
                zorder=2,
            )
            front = pareto_front(values, maximize)
            hv = hypervolume(values, ref, maximize)
            color, style = front_styles[s]
            xs, ys = _staircase(values[front], signs)
            (line,) = ax.plot(
                xs,
                ys,
                color=color,
                linestyle=style,
                linewidth=1.5,
                label=f"{label}: Pareto front ({len(front)} trials), hypervolume {hv:.4g}",
                zorder=3,
            )
            handles.append(line)
            for i in front:
                ax.annotate(
                    f"ε={eps[i]:g}",
                    (values[i, 0], values[i, 1]),
                    xytext=(4, 4) if s == 0 else (4, -10),
                    textcoords="offset points",
                    fontsize=7,
                    color=color,
                )
        # Some study has points (the early return above), so some scatter set the mappable.
        assert mappable is not None
        bar = fig.colorbar(mappable, ax=ax, pad=0.02)
        bar.set_label(_eps_label(norms[0]) if len(norms) == 1 else "training ε (input units)")
        ax.set_xlabel(_objective_label(objs[0]))
        ax.set_ylabel(_objective_label(objs[1]))
        ax.grid(alpha=0.3)
        ax.margins(0.08)
        fig.legend(handles=handles, loc="outside lower center", ncols=1)
        directions = ", ".join(
            f"{'max' if sign < 0 else 'min'} {name}" for name, sign in zip(objs, signs, strict=True)
        )
        ref_text = ", ".join(f"{v:g}" for v in ref)
        fig.suptitle(
            f"Search vs grid: one point per trained network ({directions})\n"
            f"hypervolume relative to the reference point ({ref_text})"
        )
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(objs))
        return _save(fig, out_dir, f"search_vs_grid-{slug}")


__all__ = [
    "hypervolume",
    "objective_points",
    "pareto_front",
    "plot_search_vs_grid",
    "search_summary",
]
