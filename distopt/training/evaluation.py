"""Loss and accuracy of a model on a split (sharded over ranks, all-reduced), and of a decoded
artifact on a split (CPU, fp32, its stored input normalization): how every reported accuracy is
measured."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distopt import metrics as M
from distopt.compress import ArtifactError, decode
from distopt.data import Splits, shard
from distopt.runtime import InputNorm
from distopt.training.distributed import WorkerEnv, all_sum, all_sum_tensor
from distopt.training.precision import DTYPES

__all__ = ["AUC_BINS", "Evaluation", "auc_from_histograms", "evaluate", "evaluate_artifact",
           "quality_metrics"]


# The positive class's probability is binned this finely for the ROC AUC: a histogram per
# class sums over ranks like the loss does, and pairs within one bin count half (a tie), so
# the AUC is exact up to ties closer than 1 / AUC_BINS.
AUC_BINS = 1 << 16


class Evaluation(NamedTuple):
    """What :func:`evaluate` measures on a split: mean cross-entropy, accuracy, and, for two
    classes, the ROC AUC of class 1's probability (NaN otherwise, or with one class only)."""

    loss: float
    accuracy: float
    auc: float = math.nan


def auc_from_histograms(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC from per-bin counts of negatives and positives over increasing scores: the
    chance that a random positive scores above a random negative, ties counting half."""
    n_neg, n_pos = float(neg.sum()), float(pos.sum())
    if n_neg == 0 or n_pos == 0:
        return math.nan
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (n_neg * n_pos))


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, norm: InputNorm, env: WorkerEnv,
             batch_size: int, precision: str = "fp32", channels_last: bool = False,
             auc: bool = True) -> Evaluation:
    """Loss, accuracy (and, for two classes unless ``auc`` is False, ROC AUC) over all of
    ``x``, each rank taking a strided shard."""
    model.eval()
    idx = shard(len(x), env.rank, env.world_size, 0, 0, shuffle=False)
    # Sums stay on the device: one synchronization per evaluation, not two per batch.
    loss_t = torch.zeros((), dtype=torch.float64, device=env.device)
    correct_t = torch.zeros((), dtype=torch.int64, device=env.device)
    hist = None
    dtype = DTYPES[precision]
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        xb = norm(torch.from_numpy(x[b]).to(env.device))
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = torch.from_numpy(y[b]).to(env.device)
        with torch.autocast(env.device.type, dtype=dtype, enabled=precision != "fp32"):
            out = model(xb).float()
        loss_t += F.cross_entropy(out, yb, reduction="sum")
        correct_t += (out.argmax(1) == yb).sum()
        if auc and out.shape[1] == 2:
            if hist is None:
                hist = torch.zeros(2 * AUC_BINS, dtype=torch.float64, device=env.device)
            p1 = torch.softmax(out, 1)[:, 1]
            bins = (p1 * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
            hist.index_add_(0, yb.long() * AUC_BINS + bins,
                            torch.ones(len(b), dtype=torch.float64, device=env.device))
    # Whether the model has two classes is agreed on by all ranks (one with no rows saw no
    # output), so that all of them join the histogram's reduction or none.
    loss_sum, correct, n, binary = all_sum([loss_t.item(), float(correct_t.item()),
                                            float(len(idx)), float(hist is not None)], env)
    roc = math.nan
    if binary:
        h = hist if hist is not None else torch.zeros(2 * AUC_BINS, dtype=torch.float64,
                                                      device=env.device)
        h = all_sum_tensor(h, env).cpu().numpy()
        roc = auc_from_histograms(h[:AUC_BINS], h[AUC_BINS:])
    return Evaluation(loss_sum / max(n, 1), correct / max(n, 1), roc)


def quality_metrics(val: Evaluation) -> dict[str, float]:
    """The validation metrics of an evaluation, under their reported names (log loss and AUC
    NaN unless the labels are binary)."""
    binary = not math.isnan(val.auc)
    return {M.VAL_LOSS: val.loss, M.VAL_ACCURACY: val.accuracy, M.VAL_AUC: val.auc,
            M.VAL_LOGLOSS: val.loss if binary else math.nan}


def evaluate_artifact(data: bytes, splits: Splits, which: str = "test",
                      source: str = "artifact") -> dict[str, float]:
    """Accuracy of a decoded artifact on a split, on CPU in fp32, using its stored input norm
    (an integer model's: its integer reference's).

    A file without a valid input normalization, or for inputs of another shape than the data's,
    raises :class:`ArtifactError` naming the mismatch."""
    dec = decode(data, source)
    try:
        norm = InputNorm.from_meta(dec.meta["input"])
        if not all(math.isfinite(v) for v in (norm.scale, norm.mean, norm.std)) or norm.std <= 0:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{source}: no valid input normalization in its meta") from None
    x, y = (splits.x_test, splits.y_test) if which == "test" else (splits.x_val, splits.y_val)
    if tuple(dec.model.spec.in_shape) != norm.shape_after(tuple(x.shape[1:])):
        raise ArtifactError(f"{source}: the model takes inputs of shape "
                            f"{list(dec.model.spec.in_shape)}, the data's are {list(x.shape[1:])}"
                            + (f" (resized to {list(norm.size)})" if norm.size else ""))
    e = evaluate(dec.reference, x, y, norm, WorkerEnv(), 512)
    out = {f"{which}_loss": e.loss, f"{which}_accuracy": e.accuracy, M.SIZE_BYTES: len(data)}
    if not math.isnan(e.auc):
        out.update({f"{which}_auc": e.auc, f"{which}_logloss": e.loss})
    return out
