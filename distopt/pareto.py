"""Pareto fronts and hypervolumes, numpy only.

Objectives come with directions ("max" or "min"); internally everything is turned into
minimization by negating maximized columns. Rules for awkward values:

- a point with NaN in any objective is *infeasible*: never on the front, never dominating;
- infinities compare as numbers (``+inf`` size is worse than any finite size);
- identical points do not dominate each other, so duplicates are all on the front;
- a point contributes to the hypervolume only where it is strictly better than the reference
  point in every objective.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["to_minimization", "non_dominated", "pareto_ranks", "hypervolume",
           "hv_contributions", "promotion_order"]


def to_minimization(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Copy of ``points`` (n, k) with maximized columns negated."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != len(directions):
        raise ValueError(f"points must have shape (n, {len(directions)}), but got "
                         f"{points.shape}")
    bad = [d for d in directions if d not in ("max", "min")]
    if bad:
        raise ValueError(f"directions must be 'max' or 'min', but got {bad}")
    sign = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return points * sign


def non_dominated(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the points no other feasible point dominates."""
    p = to_minimization(points, directions)
    feasible = ~np.isnan(p).any(axis=1)
    mask = feasible.copy()
    idx = np.flatnonzero(feasible)
    for i in idx:
        others = p[idx]
        # Any feasible j with p_j <= p_i everywhere and < somewhere dominates i.
        dom = np.all(others <= p[i], axis=1) & np.any(others < p[i], axis=1)
        if dom.any():
            mask[i] = False
    return mask


def pareto_ranks(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting: rank 0 is the front, 1 the front once 0 is removed, ...;
    infeasible (NaN) points get rank -1."""
    p = np.asarray(points, dtype=float)
    ranks = np.full(len(p), -1)
    remaining = ~np.isnan(to_minimization(p, directions)).any(axis=1)
    rank = 0
    while remaining.any():
        sub = np.flatnonzero(remaining)
        front = sub[non_dominated(p[sub], directions)]
        ranks[front] = rank
        remaining[front] = False
        rank += 1
    return ranks


def _hv_min(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimization points ``p`` (all strictly better than ``ref``)."""
    if len(p) == 0:
        return 0.0
    k = p.shape[1]
    if k == 1:
        return float(ref[0] - p[:, 0].min())
    if k == 2:
        # Sweep by the first objective; keep the running best of the second.
        order = np.lexsort((p[:, 1], p[:, 0]))
        area, best = 0.0, ref[1]
        for x, y in p[order]:
            if y < best:
                area += (ref[0] - x) * (best - y)
                best = y
        return float(area)
    # Slicing on the last objective (HSO): exact, fine for the fronts a search produces.
    order = np.argsort(p[:, -1])
    p = p[order]
    volume = 0.0
    for i in range(len(p)):
        upper = p[i + 1, -1] if i + 1 < len(p) else ref[-1]
        depth = upper - p[i, -1]
        if depth > 0:
            sl = p[: i + 1, :-1]
            volume += depth * _hv_min(sl[non_dominated(sl, ["min"] * (k - 1))], ref[:-1])
    return float(volume)


def hypervolume(points: np.ndarray, directions: Sequence[str], reference: Sequence[float]
                ) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (in the objectives' own
    units and directions: for a maximized accuracy the reference is a low accuracy)."""
    p = to_minimization(points, directions)
    ref = to_minimization(np.asarray([reference], dtype=float), directions)[0]
    if np.isnan(ref).any() or np.isinf(ref).any():
        raise ValueError(f"reference must be finite, but got {list(reference)}")
    keep = ~np.isnan(p).any(axis=1) & np.all(p < ref, axis=1)
    p = p[keep]
    if len(p) == 0:
        return 0.0
    p = p[non_dominated(p, ["min"] * p.shape[1])]
    return _hv_min(np.unique(p, axis=0), ref)


def hv_contributions(points: np.ndarray, directions: Sequence[str], reference: Sequence[float]
                     ) -> np.ndarray:
    """Each point's exclusive hypervolume: the volume lost if it alone were removed. A duplicate
    point contributes 0 (its twin still covers the volume), as does a dominated one."""
    points = np.asarray(points, dtype=float)
    total = hypervolume(points, directions, reference)
    out = np.zeros(len(points))
    for i in range(len(points)):
        rest = np.delete(points, i, axis=0)
        out[i] = total - hypervolume(rest, directions, reference)
    return out


def promotion_order(points: np.ndarray, directions: Sequence[str], reference: Sequence[float]
                    ) -> np.ndarray:
    """Indices of ``points``, best first: by non-dominated sorting (front 0 first), within a
    front by exclusive hypervolume contribution within that front (largest first: the points
    that spread the front, rather than near-duplicates), then by index (earlier first).
    Infeasible (NaN) points come last.

    The result is an *ordering* (position -> index), not a rank per point: position p holds
    the index of the p-th best point."""
    points = np.asarray(points, dtype=float)
    ranks = pareto_ranks(points, directions)
    contrib = np.zeros(len(points))
    for r in set(ranks.tolist()) - {-1}:
        members = np.flatnonzero(ranks == r)
        contrib[members] = hv_contributions(points[members], directions, reference)
    # Contributions equal up to float round-off are ties (decided by index).
    contrib = np.round(contrib, 12)
    sort_rank = np.where(ranks < 0, np.iinfo(np.int64).max, ranks)
    # np.lexsort sorts by the last key first.
    return np.lexsort((np.arange(len(points)), -contrib, sort_rank))
