"""Activation quantization (``compress.quantize.activation_bits: 8``): the method that makes a
model integer-only (:mod:`distopt.compress.integer`).

It calibrates every point's int8 grid on training inputs (min/max of one batch, point after
point, each point seeing its inputs already quantized, as the integer model will: what TFLite's
converter does with a representative dataset), with the weights as the file stores them; the
run calibrates again at the start of every fine-tune epoch and before the file is written, so
the grids are always those of the current weights. Fine-tune epochs then train through the
grids (fake quantization, straight-through gradients): quantization-aware training of the
activations. The grids go into the file's meta, where the decoder finds them and builds the
integer reference that every reported accuracy is measured on.

The calibration batch is the same on every rank (the first training inputs), so data-parallel
ranks agree on the grids without a collective.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

from distopt.compress.coding import Coding
from distopt.compress.fixed_point import QMAX, QMIN, affine_params
from distopt.compress.integer import META_KEY, QParams, quant_points, to_meta
from distopt.compress.method import CompressionMethod, register
from distopt.compress.quantization import QuantizedWeights
from distopt.config import CompressConfig, QuantizeConfig
from distopt.models import Model
from distopt.models.cost import trace

__all__ = ["ActivationGrids", "ActivationQuantization", "calibrate", "fake_quantize"]


def fake_quantize(x: torch.Tensor, p: QParams) -> torch.Tensor:
    """``x`` rounded to the grid and back (straight-through gradient inside the range)."""
    return torch.fake_quantize_per_tensor_affine(x.float(), p.scale, p.zero_point, QMIN,
                                                 QMAX).to(x.dtype)


class _Hooks:
    """Hooks at a model's points: ``at(index, tensor) -> tensor`` on the input and after every
    point; average pools re-rounded to the grid they keep."""

    def __init__(self, model: Model, at: Callable[[int, torch.Tensor], torch.Tensor],
                 grid: Callable[[int], QParams]) -> None:
        self.model, self.at, self.grid = model, at, grid
        self.points, self.pools = quant_points(trace(model, model.spec))
        self.handles: list[Any] = []

    def __enter__(self) -> _Hooks:
        h = self.handles
        h.append(self.model.register_forward_pre_hook(lambda m, a: (self.at(0, a[0]), *a[1:])))
        for k, point in enumerate(self.points, start=1):
            h.append(point.module.register_forward_hook(
                lambda m, a, out, k=k: self.at(k, out)))
        for pool, k in self.pools.items():
            h.append(pool.register_forward_hook(
                lambda m, a, out, k=k: fake_quantize(out, self.grid(k))))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class ActivationGrids:
    """Within the block, every point's activations are fake-quantized to its grid (QAT)."""

    def __init__(self, model: Model, grids: list[QParams]) -> None:
        self.hooks = _Hooks(model, lambda k, x: fake_quantize(x, grids[k]), grids.__getitem__)

    def __enter__(self) -> ActivationGrids:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)


@torch.no_grad()
def calibrate(model: Model, x: torch.Tensor) -> list[QParams]:
    """Every point's grid from the min and max of its activations on the batch ``x``
    (normalized inputs), each point quantized before the layers after it see it."""
    grids: list[QParams] = []

    def observe(k: int, t: torch.Tensor) -> torch.Tensor:
        grids.append(QParams(*affine_params(float(t.min()), float(t.max()))))
        return fake_quantize(t, grids[k])

    was_training = model.training
    model.eval()
    try:
        with _Hooks(model, observe, grids.__getitem__):
            model(x)
    finally:
        model.train(was_training)
    return grids


@register
class ActivationQuantization(CompressionMethod):
    """``compress.quantize.activation_bits``: int8 activations, calibrated and trained for (see
    the module's docstring). Runs after weight quantization (it calibrates through the weights
    as stored)."""

    name = "activation_quantization"
    order = 95
    checkpoint_keys = ("activation_grids",)

    def __init__(self, settings: QuantizeConfig) -> None:
        self.settings = settings
        self.grids: list[QParams] | None = None

    @classmethod
    def from_config(cls, compress: CompressConfig) -> ActivationQuantization | None:
        return cls(compress.quantize) if compress.quantize.activation_bits else None

    def calibrate(self, model: Model, x: torch.Tensor, codings: dict[str, Coding]) -> None:
        with QuantizedWeights.coded(model, self.settings.bits, codings):
            self.grids = calibrate(model, x)

    def forward_view(self, model: Model, codings: dict[str, Coding]) -> ContextManager[Any]:
        if self.grids is None:
            return contextlib.nullcontext()
        return ActivationGrids(model, self.grids)

    def meta(self) -> dict[str, Any]:
        return {META_KEY: to_meta(self.grids)} if self.grids is not None else {}

    def checkpoint(self) -> dict[str, Any]:
        grids = [[g.scale, g.zero_point] for g in self.grids] if self.grids else None
        return {"activation_grids": grids}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        grids = state.get("activation_grids")
        self.grids = [QParams(float(s), int(z)) for s, z in grids] if grids else None

