"""The exact ROC AUC of scores against binary labels (Mann-Whitney U, ties counting half), for
checks that compare two runtimes' outputs row by row; a search's evaluations use the
rank-reducible histogram of :mod:`distopt.training.evaluation` instead."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["roc_auc"]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The chance that a random positive (label 1) scores above a random negative, ties
    counting half; NaN when either class is absent."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # rank (0-based) of each distinct score's first row
    ranks = first[inverse] + (counts[inverse] - 1) / 2 + 1  # average 1-based ranks
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
