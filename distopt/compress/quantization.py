"""Weight quantization: symmetric per-output-channel integers, in numpy (what the artifact
stores) and in torch (the same rounding, for quantization-aware fine-tuning)."""

from __future__ import annotations

import math
from typing import Any, Collection, ContextManager, Mapping

import numpy as np
import torch
from torch import nn

from distopt.compress.coding import Coding, IntCodes
from distopt.compress.method import CompressionMethod, register
from distopt.config import CompressConfig, QuantizeConfig
from distopt.models import Model, layer_kinds, prunable_weights

__all__ = ["ODD_BITS", "WEIGHT_BITS", "QuantizedWeights", "WeightQuantization", "float_bits",
           "quantize_codes", "quantize_per_channel", "quantize_tensor", "stored_float"]


WEIGHT_BITS = (32, 16, 8, 4, 3, 2)  # 2 bits = ternary codes {-1, 0, 1}
ODD_BITS = (4, 3, 2)  # widths that may take odd levels (codes within int8: at most +-15)


def quantize_codes(w: torch.Tensor, bits: int, axis: int = 0, per_tensor: bool = False,
                   odd: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row (axis 0) or per-column (axis 1) quantization: ``w ~= codes * scale``;
    ``per_tensor``: one scale for the whole tensor (a scale tensor of one value), what
    BitNetMCU uses and what lets an integer kernel keep one requantization constant a layer;
    ``odd`` (:data:`ODD_BITS`): ``2**bits`` levels without a zero, the odd codes
    ``-(2**bits - 1) .. 2**bits - 1`` (BitNetMCU's 2bitsym and 4bitsym: at 2 bits
    ``{-3, -1, 1, 3} x scale``, the scale half the mean magnitude; above, ``max|w| /
    (2**bits - 1)``), each weight at its nearest level.

    The one implementation behind both quantization-aware training and the artifact's codec,
    so the two stay bit-identical by construction. Codes are integers in ``[-qmax, qmax]``,
    ``qmax = 2**(bits-1) - 1``; the scale is ``max|w| / qmax``, except at 2 bits (ternary),
    where it is the mean magnitude of the row's non-zeros (BitNet b1.58's absmean: the max
    would round most weights to zero). Scales are rounded to float16 (what format v2 stores)
    whenever every one of the tensor's scales survives that rounding (upwards) within one part
    in 2**10;
    all-zero rows get scale 1."""
    qmax = 2 ** (bits - 1) - 1
    x = w.detach().float()
    x = x.transpose(0, 1) if axis == 1 else x
    flat = x.reshape(x.shape[0], -1)
    if per_tensor:
        flat = flat.reshape(1, -1)
    if bits == 2:
        count = (flat != 0).sum(dim=1).clamp(min=1)
        mag = flat.abs().sum(dim=1) / count / (2 if odd else 1)
    else:
        mag = flat.abs().amax(dim=1) / (2 ** bits - 1 if odd else qmax)
    scale = torch.where(mag > 0, mag, torch.ones_like(mag)).float()
    half = scale.half()
    # Round up, never down, so that max|w| / scale stays within qmax: a rounded-down scale
    # would clip the largest weights by up to qmax * 2**-11 steps (16 at 16 bits).
    half = torch.where(half.float() < scale, torch.nextafter(half, torch.full_like(half, math.inf)),
                       half).float()
    # float16 only where it is as exact as in its normal range (a subnormal or overflowing
    # scale would move the codes): within one part in 2**10 of the float32 scale.
    # (One choice for the whole tensor, made on its device: no host sync per weight per step.)
    exact = torch.isfinite(half).all() & ((half - scale) <= scale * 2 ** -10).all()
    scale = torch.where(exact, half, scale)
    if odd:  # the nearest odd multiple of the scale: level (k + 1/2) of steps 2 x scale
        half_levels = 2 ** (bits - 1)
        k = torch.clamp(torch.floor(flat / (2 * scale[:, None])), -half_levels, half_levels - 1)
        q = (2 * k + 1).reshape(x.shape)
    else:
        q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax).reshape(x.shape)
    q = q.transpose(0, 1) if axis == 1 else q
    return q.to(torch.int32), scale


def quantize_per_channel(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_codes` on a numpy array, axis 0: int32 codes and float32 scales."""
    q, scale = quantize_codes(torch.from_numpy(np.ascontiguousarray(w, np.float32)), bits)
    return q.numpy(), scale.numpy()


@torch.no_grad()
def quantize_tensor(w: torch.Tensor, bits: int, axis: int = 0, per_tensor: bool = False,
                    odd: bool = False) -> torch.Tensor:
    """What the artifact stores, in torch: :func:`quantize_codes`' codes times their scales."""
    q, scale = quantize_codes(w, bits, axis, per_tensor, odd)
    shape = [1] * w.dim()
    shape[axis] = -1
    return (q.float() * scale.reshape(shape)).to(w.dtype)


def float_bits(default_bits: int) -> int:
    """Bits of the float tensors (biases) in a format-v2 artifact whose weights default to
    ``default_bits``: float16 beside quantized weights, float32 beside float32 weights."""
    return 16 if default_bits < 32 else 32


def stored_float(t: torch.Tensor, bits: int) -> torch.Tensor:
    """A float tensor as the artifact stores it: rounded to float16 at 16 bits, unless that
    would overflow (then float32, which the encoder detects the same way)."""
    if bits == 16:
        half = t.detach().half().float()
        return torch.where(torch.isfinite(half).all(), half, t.detach().float()).to(t.dtype)
    return t.detach().clone()


class QuantizedWeights:
    """Within the block, every prunable weight holds its quantized value, and every other
    parameter (the biases) its stored precision; on exit the float values come back. Gradients
    computed inside are those of the model as the artifact stores it and update the float
    values (the straight-through estimator), so fine-tuning learns the rounding the artifact
    will apply."""

    def __init__(self, model: nn.Module, bits: int,
                 weight_bits: Mapping[str, int] | None = None,
                 per_tensor: Collection[str] = (), odd: Collection[str] = ()) -> None:
        """``weight_bits``: bits of single weights by parameter name (mixed widths); 32-bit
        weights stay float; ``per_tensor``: the weights with one scale for the whole tensor;
        ``odd``: those on odd levels. Biases are rounded to :func:`float_bits` of ``bits``."""
        per_weight = dict(weight_bits or {})
        prunable = prunable_weights(model)
        names = {name for name, _, _ in prunable}
        self.weights = [(w, axis, per_weight.get(name, bits), (name in per_tensor, name in odd))
                        for name, w, axis in prunable]
        fbits = float_bits(bits)
        self.floats = [] if fbits == 32 or getattr(getattr(model, "spec", None), "batch_norm",
                                                    False) else \
            [p for name, p in model.named_parameters() if name not in names]
        # The float values, kept while the block runs: buffers made once, filled every step.
        self.saved = [torch.empty_like(p) for p in [w for w, _, _, _ in self.weights] +
                      self.floats]

    @classmethod
    def coded(cls, model: nn.Module, bits: int, codings: Mapping[str, Coding]
              ) -> QuantizedWeights:
        """The weights as ``codings`` store them: integer codes at their bits and scales;
        weights another coding stores (a codebook) stay as they are."""
        weight_bits = {n: c.bits if isinstance(c, IntCodes) else 32 for n, c in codings.items()}
        ints = {n: c for n, c in codings.items() if isinstance(c, IntCodes)}
        return cls(model, bits, weight_bits, {n for n, c in ints.items() if c.per_tensor},
                   {n for n, c in ints.items() if c.odd})

    def __enter__(self) -> QuantizedWeights:
        with torch.no_grad():
            for (w, axis, bits, grid), keep in zip(self.weights, self.saved):
                keep.copy_(w)
                if bits < 32:
                    w.copy_(quantize_tensor(w, bits, axis, *grid))
            for p, keep in zip(self.floats, self.saved[len(self.weights):]):
                keep.copy_(p)
                p.copy_(stored_float(p, 16))
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            params = [w for w, _, _, _ in self.weights] + self.floats
            for p, kept in zip(params, self.saved):
                p.copy_(kept)


@register
class WeightQuantization(CompressionMethod):
    """``compress.quantize``: every weight no earlier method coded is stored as integer codes at
    its layer kind's bits (``bits``, or its ``bits_*``; 32: float32); with ``qat`` the fine-tune
    trains through that rounding (:class:`QuantizedWeights`). Always on; last in plan order, so
    it codes whatever the other methods leave."""

    name = "quantization"
    order = 90

    def __init__(self, settings: QuantizeConfig) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, compress: CompressConfig) -> WeightQuantization:
        return cls(compress.quantize)

    def claim_codings(self, model: Model, codings: dict[str, Coding]) -> None:
        per_tensor = self.settings.scales == "tensor"
        for name, kind in layer_kinds(model).items():
            bits = self.settings.bits_of(kind)
            codings.setdefault(name, IntCodes(bits, per_tensor and bits < 32,
                                              self.settings.odd_levels and bits in ODD_BITS))

    @property
    def fine_tunes(self) -> bool:
        return self.settings.fine_tunes  # QAT opens the fine-tune, pruning or not

    def forward_view(self, model: Model, codings: dict[str, Coding]) -> ContextManager[Any]:
        # Called in fine-tune epochs only.
        if not self.settings.qat:
            return super().forward_view(model, codings)
        return QuantizedWeights.coded(model, self.settings.bits, codings)
