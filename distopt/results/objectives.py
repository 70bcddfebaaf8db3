"""The one objective space of a search: the objectives as a matrix with sizes on a log10 scale
(a front spans decades of bytes), and the hypervolume reference point. Early stopping ranks
trials at its rungs in this space, and the report measures the front's hypervolume in it."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from distopt import metrics as M
from distopt.config import Config
from distopt.pareto import hypervolume

__all__ = ["LOG_SCALED", "at_chance", "at_chance_row", "beyond_worst", "hv_reference", "hypervolume_curve",
           "objective_matrix", "scaled"]

# Costs that span decades (bytes, MACs), as the final metric and as read at a rung: compared
# on a log10 scale.
LOG_SCALED = (M.SIZE_BYTES, M.FLASH_BYTES, M.WEIGHT_FLASH_BYTES, M.PEAK_RAM_BYTES, M.MACS,
              M.NONZERO_MACS)
LOG_SCALED = (*LOG_SCALED, *(M.RUNG_KEYS[k] for k in LOG_SCALED))


def scaled(name: str, value: float) -> float:
    """One objective value in the objective space: byte counts and MACs as log10 (positive
    ones; NaN stays NaN), everything else as it is."""
    return math.log10(value) if name in LOG_SCALED and value > 0 else value


def objective_matrix(rows: Sequence[dict[str, Any]], cfg: Config) -> np.ndarray:
    """The search's objectives of ``rows`` as a matrix (one row each) in the objective space."""
    cols = [[scaled(name, float(r.get(name, math.nan))) for r in rows]
            for name, _ in cfg.search.objectives]
    return np.array(cols, dtype=float).T if cols else np.empty((len(rows), 0))


def beyond_worst(col: np.ndarray, direction: str) -> float:
    """10% beyond the worst of the values ``col`` (a reference point's coordinate)."""
    worst = col.max() if direction == "min" else col.min()
    return float(worst + (0.1 if direction == "min" else -0.1) * (abs(worst) + 1e-9))


def hv_reference(cfg: Config, points: np.ndarray) -> list[float]:
    """Fixed per experiment: chance accuracy for accuracy, 0.5 for AUC, else 10% beyond the
    worst value."""
    ref = []
    for i, (name, direction) in enumerate(cfg.search.objectives):
        col = points[:, i][np.isfinite(points[:, i])] if len(points) else np.array([])
        if name == M.VAL_ACCURACY:
            ref.append(1.0 / cfg.data.num_classes)
        elif name == M.VAL_AUC:  # a ranking no better than chance
            ref.append(0.5)
        elif len(col) == 0:
            ref.append(0.0)
        else:
            ref.append(beyond_worst(col, direction))
    return ref


def hypervolume_curve(rows: Sequence[dict[str, Any]], cfg: Config) -> tuple[list[int], list[float]]:
    """Hypervolume of the completed trials among the first n, for every trial number n."""
    ordered = sorted(rows, key=lambda r: r["trial_number"])
    pts = objective_matrix(ordered, cfg)
    done = np.array([r["status"] == "COMPLETE" for r in ordered], bool)
    ref = hv_reference(cfg, pts[done])
    dirs = [d for _, d in cfg.search.objectives]
    xs, ys = [], []
    for n in range(1, len(ordered) + 1):
        sel = pts[:n][done[:n]]
        xs.append(ordered[n - 1]["trial_number"])
        ys.append(hypervolume(sel, dirs, ref) if len(sel) else 0.0)
    return xs, ys


def at_chance(val_accuracy: float, num_classes: int, n_val: int) -> bool:
    """Whether a validation accuracy is no better than guessing: within three binomial
    standard deviations of ``1 / num_classes`` on ``n_val`` samples (10.5% on 10 classes and
    6,000 samples is; 11.5% is not). Such a model is never on the front."""
    p = 1.0 / num_classes
    return not val_accuracy > p + 3 * math.sqrt(p * (1 - p) / max(n_val, 1))


def at_chance_row(row: dict[str, Any], num_classes: int) -> bool:
    """:func:`at_chance` of a result row (a trial's final metrics or a ``trials.parquet`` row),
    which records how many validation rows its accuracy is over; a row from before that was
    recorded is never judged at chance. The one rule the report's front and the live gauges
    both apply."""
    n = row.get(M.VAL_SAMPLES)
    acc = row.get(M.VAL_ACCURACY)
    if not isinstance(n, (int, float)) or not isinstance(acc, (int, float)) or \
            not (n > 0 and math.isfinite(acc)):
        return False
    return at_chance(float(acc), num_classes, int(n))
