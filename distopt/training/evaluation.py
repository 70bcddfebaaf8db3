"""Loss and accuracy of a model on a split (sharded over ranks, all-reduced), and of a decoded
artifact on a split (CPU, fp32, its stored input normalization): how every reported accuracy is
measured."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distopt import metrics as M
from distopt.compress import ArtifactError, decode
from distopt.data import Splits, shard
from distopt.runtime import InputNorm
from distopt.training.distributed import WorkerEnv, all_sum
from distopt.training.precision import DTYPES

__all__ = ["evaluate", "evaluate_artifact"]


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, norm: InputNorm, env: WorkerEnv,
             batch_size: int, precision: str = "fp32", channels_last: bool = False
             ) -> tuple[float, float]:
    """(mean loss, accuracy) over all of ``x``, each rank taking a strided shard."""
    model.eval()
    idx = shard(len(x), env.rank, env.world_size, 0, 0, shuffle=False)
    # Sums stay on the device: one synchronization per evaluation, not two per batch.
    loss_t = torch.zeros((), dtype=torch.float64, device=env.device)
    correct_t = torch.zeros((), dtype=torch.int64, device=env.device)
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
    loss_sum, correct, n = all_sum([loss_t.item(), float(correct_t.item()), float(len(idx))],
                                    env)
    return loss_sum / max(n, 1), correct / max(n, 1)



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
    loss, acc = evaluate(dec.reference, x, y, norm, WorkerEnv(), 512)
    return {f"{which}_loss": loss, f"{which}_accuracy": acc, M.SIZE_BYTES: len(data)}
