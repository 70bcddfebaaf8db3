"""Integer-only models: where a model's activations are quantized (its *points*), and the
integer reference that computes a decoded file as an int8 device does.

The scheme is TensorFlow Lite's int8 one: activations asymmetric int8 per tensor (``real =
scale * (q - zero_point)``), weights symmetric per output channel (the file's integer codes at
their bits, 8 or fewer, times its per-channel scales), biases int32 at ``input scale x weight
scale``, every conv and dense layer accumulating ``(q_in - zp_in) * code`` in int32 and
requantizing with a fixed-point multiplier and shift (:mod:`distopt.compress.fixed_point`),
a ReLU after a layer fused into its output clamp, max-pooling on the int8 values, global
average pooling as a rounded integer mean (same scale in and out).

Points, in execution order (:func:`quant_points`): the model's input, then the output of
every conv and dense layer (after its ReLU, where one follows). The file stores one
``(scale, zero_point)`` per point in its meta (:data:`META_KEY`); the compression method that
calibrates and trains them is :mod:`distopt.compress.activations`.

:class:`IntegerNet` is the reference every reported accuracy of an integer model is measured
on (``Decoded.reference``); the C export writes its integer constants as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distopt.compress.fixed_point import QMAX, QMIN, avg_divide, quantize_multiplier, requantize
from distopt.models.cost import ALIASING, LayerCall, trace
from distopt.models.spec import ModelSpec

__all__ = ["ACTIVATION_BITS", "INTEGER_LAYERS", "IntLayer", "IntegerNet", "META_KEY",
           "QParams", "QuantPoint", "from_meta", "quant_points", "to_meta"]

META_KEY = "activations"  # the file meta's entry: {"bits": 8, "scale": [...], "zero_point": [...]}
ACTIVATION_BITS = (8,)
COMPUTE = (nn.Conv2d, nn.Linear)
PASS = (*ALIASING, nn.Sequential)  # no computation (a leaf Sequential: mlp's empty features)
INTEGER_LAYERS = (*COMPUTE, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, *PASS)


@dataclass(frozen=True)
class QParams:
    """One point's int8 grid: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class QuantPoint:
    """Where one point's activations are quantized: after ``module`` (a conv or dense layer,
    or the ReLU that follows it); ``compute`` is the layer whose output it is."""

    compute: nn.Module
    module: nn.Module
    relu: bool


def quant_points(calls: list[LayerCall], source: str = "this model"
                 ) -> tuple[list[QuantPoint], dict[nn.Module, int]]:
    """The points after the input (one per conv/dense layer), and every average pool with the
    index of the point whose grid it keeps (0: the input's). Raises ValueError for a layer no
    integer kernel computes, or a ReLU that follows no conv or dense layer."""
    points: list[QuantPoint] = []
    pools: dict[nn.Module, int] = {}
    i = 0
    while i < len(calls):
        m = calls[i].module
        if not isinstance(m, INTEGER_LAYERS) or isinstance(m, nn.RNNBase):
            raise ValueError(f"{source}: layer {type(m).__name__} has no integer kernel "
                             "(integer models take conv, dense, ReLU, max and global average "
                             "pooling)")
        if isinstance(m, COMPUTE):
            j = i + 1
            while j < len(calls) and isinstance(calls[j].module, PASS) and \
                    not isinstance(calls[j].module, nn.ReLU):
                j += 1
            relu = j < len(calls) and isinstance(calls[j].module, nn.ReLU)
            points.append(QuantPoint(m, calls[j].module if relu else m, relu))
            i = j + 1 if relu else i + 1
            continue
        if isinstance(m, nn.ReLU):
            after = type(calls[i - 1].module).__name__ if i else "the input"
            raise ValueError(f"{source}: a ReLU after {after}; integer models fuse a ReLU "
                             "into the conv or dense layer before it")
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if tuple(calls[i].output.shape[2:]) != (1, 1):
                raise ValueError(f"{source}: average pooling to "
                                 f"{tuple(calls[i].output.shape[2:])}; integer models pool "
                                 "globally (to 1 x 1)")
            pools[m] = len(points)
        i += 1
    return points, pools


def to_meta(params: list[QParams], bits: int = 8) -> dict[str, Any]:
    """The file meta's entry for the points' grids (float32 scales)."""
    return {"bits": bits, "scale": [float(np.float32(p.scale)) for p in params],
            "zero_point": [int(p.zero_point) for p in params]}


def from_meta(entry: Any, count: int, source: str = "artifact") -> list[QParams]:
    """The points' grids from a file's meta entry, checked: ``count`` points (the model's input
    and its conv/dense layers), finite positive scales, zero points in ``[-128, 127]``. Raises
    ValueError naming what is wrong."""
    if not isinstance(entry, Mapping) or entry.get("bits") not in ACTIVATION_BITS:
        raise ValueError(f"{source}: meta.{META_KEY} must hold bits 8, scale and zero_point "
                         f"lists; got {str(entry)[:200]}")
    scales, zps = entry.get("scale"), entry.get("zero_point")
    if not isinstance(scales, list) or not isinstance(zps, list) or \
            not len(scales) == len(zps) == count:
        raise ValueError(f"{source}: meta.{META_KEY} must list {count} scales and zero points "
                         "(the input and every conv and dense layer)")
    out = []
    for s, z in zip(scales, zps):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or \
                s <= 0 or isinstance(z, bool) or not isinstance(z, int) or not QMIN <= z <= QMAX:
            raise ValueError(f"{source}: meta.{META_KEY}: scale {s!r}, zero point {z!r}; scales "
                             "are finite and > 0, zero points integers in [-128, 127]")
        out.append(QParams(float(np.float32(s)), int(z)))
    return out


@dataclass(frozen=True)
class IntLayer:
    """One conv or dense layer with its integer constants, as the device holds them."""

    key: str  # the weight's parameter name in the file
    codes: torch.Tensor  # int64, the weight's shape
    bits: int
    bias: torch.Tensor | None  # int32 values (int64 tensor), one per output channel
    multiplier: torch.Tensor  # int64, one per output channel
    shift: torch.Tensor  # int64, one per output channel
    zp_in: int
    zp_out: int
    act_min: int  # zp_out where a ReLU is fused, else -128
    conv: nn.Conv2d | None  # geometry (kernel, padding, groups); None: dense
    weight_scale: np.ndarray  # float32, one per output channel (what exports with float
    # scales write; the multipliers above are derived from them)
    out: QParams  # the output's grid

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        x = (q - self.zp_in).double()  # small integers: float64 sums of them are exact
        w = self.codes.double()
        if self.conv is not None:
            acc = F.conv2d(x, w, None, self.conv.stride, self.conv.padding, self.conv.dilation,
                           self.conv.groups)
            shape = (1, -1, 1, 1)
        else:
            acc = F.linear(x.reshape(len(x), -1), w)
            shape = (1, -1)
        acc = acc.round().long()
        if self.bias is not None:
            acc = acc + self.bias.reshape(shape)
        out = requantize(acc, self.multiplier.reshape(shape), self.shift.reshape(shape))
        return (out + self.zp_out).clamp(self.act_min, QMAX)


@dataclass(frozen=True)
class IntPool:
    """Max pooling (window = stride) or a global average (``kernel`` None)."""

    kernel: tuple[int, int] | None

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return F.max_pool2d(q.double(), self.kernel).long()
        count = q.shape[2] * q.shape[3]
        return avg_divide(q.sum(dim=(2, 3), keepdim=True), count).clamp(QMIN, QMAX)


class IntegerNet(nn.Module):
    """The integer reference of a decoded conv/dense model: normalized float inputs in (as
    every model of the family takes them), quantized to the input's grid, integer layers, int8
    logits out, returned dequantized (float32) so that losses and argmax read them as any
    model's. :meth:`int8` gives the int8 values themselves (inputs and logits), for exports."""

    def __init__(self, model: nn.Module, spec: ModelSpec, codes: Mapping[str, tuple[Any, Any]],
                 bits: Mapping[str, int], params: list[QParams]) -> None:
        super().__init__()
        self.spec = spec
        calls = trace(model, spec)
        points, _ = quant_points(calls)
        if len(params) != len(points) + 1:
            raise ValueError(f"{len(params)} activation grids for {len(points) + 1} points")
        names = {id(p): n for n, p in model.named_parameters()}
        by_compute = {id(p.compute): (k + 1, p) for k, p in enumerate(points)}
        self.input, self.output = params[0], params[-1]
        self.ops: list[IntLayer | IntPool] = []
        current = params[0]
        for call in calls:
            m = call.module
            if id(m) in by_compute:
                k, point = by_compute[id(m)]
                key = names[id(m.weight)]
                if key not in codes or bits.get(key, 32) > 8:
                    raise ValueError(f"{key}: integer models need weights as integer codes of "
                                     "8 bits or fewer")
                q, scale = codes[key]
                self.ops.append(_int_layer(key, m, np.asarray(q), np.asarray(scale), bits[key],
                                           current, params[k], point.relu))
                current = params[k]
            elif isinstance(m, nn.MaxPool2d):
                k_ = m.kernel_size
                self.ops.append(IntPool((k_, k_) if isinstance(k_, int) else tuple(k_)))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                self.ops.append(IntPool(None))

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized float inputs on the input's int8 grid (int64 tensor)."""
        s, z = np.float32(self.input.scale), self.input.zero_point
        return (torch.round(x.float() / s) + z).clamp(QMIN, QMAX).long()

    def int8(self, q: torch.Tensor) -> torch.Tensor:
        """int8 logits (int64 tensor) of int8 inputs ``q`` (the model's input shape)."""
        for op in self.ops:
            q = op(q)
        return q.reshape(len(q), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            q = self.int8(self.quantize_input(x))
        return (q - self.output.zero_point).float() * np.float32(self.output.scale)


def _int_layer(key: str, m: nn.Module, codes: np.ndarray, scale: np.ndarray, bits: int,
               qin: QParams, qout: QParams, relu: bool) -> IntLayer:
    """The integer constants of one layer: ``real multiplier = s_in * s_w / s_out`` per output
    channel, bias ``round(b / (s_in * s_w))``."""
    s_w = scale.astype(np.float64).reshape(-1)
    eff = float(np.float32(qin.scale)) * s_w
    mult, shift = zip(*(quantize_multiplier(float(r) / float(np.float32(qout.scale)))
                        for r in eff))
    bias = None
    if getattr(m, "bias", None) is not None:
        b = m.bias.detach().double().cpu().numpy()
        bias = torch.from_numpy(np.clip(np.round(b / eff), -2 ** 31, 2 ** 31 - 1).astype(np.int64))
    return IntLayer(key, torch.from_numpy(codes.astype(np.int64)), int(bits), bias,
                    torch.tensor(mult, dtype=torch.int64), torch.tensor(shift, dtype=torch.int64),
                    qin.zero_point, qout.zero_point, qout.zero_point if relu else QMIN,
                    m if isinstance(m, nn.Conv2d) else None, scale.astype(np.float32).reshape(-1),
                    qout)
