"""The Pareto front: the one dominance rule that every front in analysis/ is taken by.

The rule (weak dominance). Row a dominates row b when a is at least as good as b on every
objective and strictly better on at least one. The front is the rows no other row dominates, so:

- ties are kept: rows equal on one objective and each better on another are all on the front,
  and a row tied on one objective with a row better on the other is off it;
- duplicates are kept: identical copies of a front row are all on the front (none dominates
  another), unless unique=True, which keeps only the first (lowest index) of identical rows;
- rows holding a NaN are never on the front and dominate nothing.

The trade-off figure (analysis/figures.py) and the search analysis (analysis/search.py: fronts,
hypervolumes, search summaries and the report) all call pareto_front, so a point is on the front
of a figure exactly when it is on the front of the matching table. It lives in its own module
because figures.py draws a front and search.py imports figures.py's plot style.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_points(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """points as a float array of rows x objectives (an empty list as a 0 x 0 array)."""
    p = np.asarray(points, dtype=float)
    if p.ndim == 1 and p.size == 0:
        return p.reshape(0, 0)
    if p.ndim != 2:
        raise ValueError(
            f"points must be a 2-D array (rows x objectives), got shape {p.shape}: pass one row "
            "per point, e.g. np.column_stack([x, y])"
        )
    return p


def _signs(maximize: Sequence[bool] | bool, m: int) -> np.ndarray:
    """-1 for each maximised objective, +1 for each minimised one (sign * x is minimised)."""
    flags = [bool(maximize)] * m if isinstance(maximize, bool | np.bool_) else list(maximize)
    if len(flags) != m:
        raise ValueError(
            f"maximize has {len(flags)} entries for {m} objectives: give one flag per objective "
            "(column), or a single bool for all"
        )
    return np.where(np.asarray(flags, dtype=bool), -1.0, 1.0)


def _front_min(q: np.ndarray, unique: bool = False) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of q, every column minimised, no NaN."""
    keep = np.ones(len(q), dtype=bool)
    for i in range(len(q)):
        dominators = np.all(q <= q[i], axis=1) & np.any(q < q[i], axis=1)
        keep[i] = not dominators.any()
    if unique:
        # Of identical front rows, the first (lowest index) stays.
        seen: set[bytes] = set()
        for k in np.flatnonzero(keep):
            row = q[k].tobytes()
            if row in seen:
                keep[k] = False
            seen.add(row)
    return np.flatnonzero(keep)


def pareto_front(
    points: np.ndarray | Sequence[Sequence[float]],
    maximize: Sequence[bool] | bool,
    unique: bool = False,
) -> np.ndarray:
    """Indices (ascending, int64) of the non-dominated rows of `points` (n rows x m objectives).

    maximize[k] says whether objective k is maximised (a single bool applies to every objective).
    Ties and duplicates follow the module's rule: a row is on the front when no other row is at
    least as good on every objective and strictly better on one, so identical copies of a front
    row are all on it unless unique=True, which keeps only the first (lowest index) of identical
    rows. Rows holding a NaN are never on the front and dominate nothing. The result depends only
    on the values, not on the order of the rows (up to which copy unique=True keeps).

    O(n^2 m) time with O(n m) memory per step: fine for the few thousand trials of a study.
    """
    p = _as_points(points)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    q = p * _signs(maximize, p.shape[1])
    valid = np.flatnonzero(~np.isnan(q).any(axis=1))
    return valid[_front_min(q[valid], unique)].astype(np.int64)


__all__ = ["pareto_front"]
