"""Weight quantization: symmetric per-output-channel integers, in numpy (what the artifact
stores) and in torch (the same rounding, for quantization-aware fine-tuning)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from distopt.models import prunable_weights

__all__ = ["QuantizedWeights", "quantize_per_channel", "quantize_tensor"]


def quantize_per_channel(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization: ``w ~= q * scale[:, None...]``.

    Returns int codes in ``[-(2^(b-1)-1), 2^(b-1)-1]`` and float32 scales (1.0 for all-zero
    channels, so decoding never divides by zero)."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1).astype(np.float32)
    amax = np.abs(flat).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(flat / scale[:, None]), -qmax, qmax).astype(np.int32)
    return q.reshape(w.shape), scale


@torch.no_grad()
def quantize_tensor(w: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """What the artifact stores, in torch: symmetric per-row (axis 0) or per-column (axis 1)
    integers times a float32 scale, with the same rounding (half to even) as
    :func:`quantize_per_channel`."""
    qmax = 2 ** (bits - 1) - 1
    x = w.float()
    x = x.transpose(0, 1) if axis == 1 else x
    flat = x.reshape(x.shape[0], -1)
    amax = flat.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).float()
    q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax) * scale[:, None]
    q = q.reshape(x.shape)
    return (q.transpose(0, 1) if axis == 1 else q).to(w.dtype)


class QuantizedWeights:
    """Within the block, every prunable weight holds its quantized value; on exit the float
    weights come back. Gradients computed inside are those of the quantized model and update
    the float weights (the straight-through estimator), so fine-tuning learns the rounding the
    artifact will apply."""

    def __init__(self, model: nn.Module, bits: int,
                 weight_bits: Mapping[str, int] | None = None) -> None:
        """``weight_bits``: bits of single weights by parameter name (mixed widths); 32-bit
        weights stay float."""
        per_weight = dict(weight_bits or {})
        self.weights = [(w, axis, per_weight.get(name, bits))
                        for name, w, axis in prunable_weights(model)]
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> QuantizedWeights:
        with torch.no_grad():
            for w, axis, bits in self.weights:
                self.saved.append(w.detach().clone())
                if bits < 32:
                    w.copy_(quantize_tensor(w, bits, axis))
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for (w, _, _), kept in zip(self.weights, self.saved):
                w.copy_(kept)
        self.saved = []
