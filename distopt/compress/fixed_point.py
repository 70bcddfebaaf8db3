"""The integer arithmetic of 8-bit activations, as TensorFlow Lite's int8 kernels (and CMSIS-NN's,
without single rounding) compute it: per-tensor affine activations (``real = scale * (q -
zero_point)``, ``q`` in ``[-128, 127]``), real multipliers as a 32-bit fixed-point multiplier
and a power-of-two shift, and gemmlowp's rounding (a saturating rounding doubling high
multiply, then a rounding right shift).

One implementation in torch ``int64`` (the integer reference, :mod:`distopt.compress.integer`);
the C kernels (:mod:`distopt.c_kernels`) spell the same steps out, and tests hold them to
bit-exact agreement. A floor module: imports nothing of distopt.
"""

from __future__ import annotations

import math

import torch

__all__ = ["QMAX", "QMIN", "affine_params", "avg_divide", "quantize_multiplier", "requantize"]

QMIN, QMAX = -128, 127  # int8 activations
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def affine_params(lo: float, hi: float) -> tuple[float, int]:
    """``(scale, zero_point)`` of int8 values covering ``[lo, hi]`` (widened to hold 0, so
    that zero is exact: padding and ReLU need it), as TFLite chooses them. The scale is a
    float32 value; an empty range gets scale 1."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = float(torch.tensor((hi - lo) / (QMAX - QMIN), dtype=torch.float32))
    if not math.isfinite(scale) or scale <= 0:
        return 1.0, 0
    zp = round(QMIN - lo / scale)
    return scale, int(min(max(zp, QMIN), QMAX))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``real ~= multiplier * 2**(shift - 31)`` with ``multiplier`` in ``[2**30, 2**31)`` (0 for
    a zero real): TFLite's ``QuantizeMultiplier``."""
    if real <= 0 or not math.isfinite(real):
        return 0, 0
    frac, shift = math.frexp(real)  # real = frac * 2**shift, frac in [0.5, 1)
    q = math.floor(frac * (1 << 31) + 0.5)  # std::round: halves away from zero
    if q == 1 << 31:
        q, shift = q // 2, shift + 1
    if shift < -31:  # too small to represent: flushes to zero, as TFLite does
        return 0, 0
    return int(q), int(min(shift, 30))


def _trunc_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="trunc")  # C's integer division


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``acc * real`` rounded as the device does, for int32 accumulators ``acc`` (int64 tensor)
    and per-channel ``multiplier``/``shift`` (broadcast against ``acc``): left shift
    (saturated to int32), saturating rounding doubling high multiply, rounding right shift."""
    left = shift.clamp(min=0)
    right = (-shift).clamp(min=0)
    x = torch.bitwise_left_shift(acc, left).clamp(INT32_MIN, INT32_MAX)
    ab = x * multiplier
    nudge = torch.where(ab >= 0, torch.full_like(ab, 1 << 30), torch.full_like(ab, 1 - (1 << 30)))
    high = _trunc_div(ab + nudge, 1 << 31)
    high = torch.where((x == INT32_MIN) & (multiplier == INT32_MIN),
                       torch.full_like(high, INT32_MAX), high)
    mask = torch.bitwise_left_shift(torch.ones_like(right), right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0).to(high.dtype)
    return (high >> right) + (remainder > threshold).to(high.dtype)


def avg_divide(total: torch.Tensor, count: int) -> torch.Tensor:
    """The mean of ``count`` int8 values from their int32 sum, rounded half away from zero
    (TFLite's average pooling)."""
    half = count // 2
    return _trunc_div(torch.where(total > 0, total + half, total - half), count)
