"""Compression methods as plug-ins: one protocol of hooks that a training run calls in plan
order, and the registry it builds a run's methods from.

A method (pruning, quantization, weight clustering, or a user's own) is a class registered with
:func:`register`, configured by its own section of the ``compress`` config
(``compress.prune``, ``compress.quantize``, ``compress.cluster``; a user's method reads what it
needs from the section it is given). :func:`methods_for` makes one fresh instance of every
registered method that the ``compress`` section turns on, in plan order (each class's
``order``: pruning first, quantization last, so it codes what no other method claimed). The run
itself names no method: it calls the hooks below on each of them (``distopt.training``'s
``Compression``), so a new method needs no edit to training or orchestration.

Hooks, in the order a run meets them (every one is optional: the base class does nothing):

- :meth:`CompressionMethod.preview`: the method applied to a copy of the dense weights, without
  fine-tuning: what early stopping's rungs rank a trial's size by;
- :meth:`CompressionMethod.begin`: dense training is over (BatchNorm folded, weights on the CPU);
  may return another model (structured pruning shrinks layers);
- :meth:`CompressionMethod.begin_epoch`: fine-tune epoch ``k >= 1`` starts;
- :meth:`CompressionMethod.before_clip`: the fine-tune's gradients, before gradient clipping
  measures their norm (``train.grad_clip``);
- :meth:`CompressionMethod.after_step`: after every optimizer step of the fine-tune;
- :meth:`CompressionMethod.forward_view`: a context in which forward and backward see the
  weights as the artifact will store them (quantization-aware training);
- :meth:`CompressionMethod.claim_codings`: the per-tensor coding of the weights it is
  responsible for, in the artifact;
- :meth:`CompressionMethod.calibrate`: a batch of training inputs (normalized), at the start of
  every fine-tune epoch and before the artifact is written (activation quantization sets its
  grids here);
- :meth:`CompressionMethod.meta`: what it adds to the artifact's meta;
- :meth:`CompressionMethod.checkpoint` / :meth:`CompressionMethod.restore`: its part of the
  epoch checkpoint (top-level keys of the checkpoint dict, its own names).

Nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, ContextManager

import torch

from distopt.compress.coding import Coding
from distopt.config import CompressConfig
from distopt.models import Model

__all__ = ["CompressionMethod", "METHODS", "methods_for", "register"]


class CompressionMethod:
    """The protocol; subclasses override the hooks they need and :meth:`from_config`."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 50  # plan order: lower runs first (pruning 10, quantization 90)
    checkpoint_keys: ClassVar[tuple[str, ...]] = ()  # its keys in the checkpoint dict

    @classmethod
    def from_config(cls, compress: CompressConfig) -> CompressionMethod | None:
        """This method as the ``compress`` section sets it (its own sub-section, and the
        shared fine-tune's settings), or None where the section turns it off."""
        raise NotImplementedError

    @property
    def fine_tunes(self) -> bool:
        """Whether the run fine-tunes after dense training for this method's sake."""
        return False

    def preview(self, model: Model) -> Model:
        return model

    def begin(self, model: Model, device: torch.device) -> Model:
        return model

    def begin_epoch(self, model: Model, k: int, device: torch.device) -> None:
        """Fine-tune epoch ``k`` (1-based past the first, which :meth:`begin` prepared)."""

    def before_clip(self, model: Model) -> None:
        """A method may leave out of the clipped norm what does not train (pruning zeros its
        pruned weights' gradients)."""

    def after_step(self, model: Model) -> None:
        pass

    def forward_view(self, model: Model, codings: dict[str, Coding]) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def claim_codings(self, model: Model, codings: dict[str, Coding]) -> None:
        """Set ``codings[name]`` for the weights this method codes (names not yet claimed by an
        earlier method)."""

    def calibrate(self, model: Model, x: torch.Tensor, codings: dict[str, Coding]) -> None:
        """``x``: the same training inputs on every rank (normalized, no augmentation)."""

    def meta(self) -> dict[str, Any]:
        """Entries of the artifact's meta this method writes (its own keys)."""
        return {}

    def checkpoint(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        pass


METHODS: list[type[CompressionMethod]] = []


def register(cls: type[CompressionMethod]) -> type[CompressionMethod]:
    """Class decorator: add a method to the registry. A name or checkpoint key already taken
    is refused."""
    taken = {m.name for m in METHODS}
    keys = {k for m in METHODS for k in m.checkpoint_keys}
    if not cls.name or cls.name in taken:
        raise ValueError(f"compression method name {cls.name!r} is empty or registered already")
    if keys & set(cls.checkpoint_keys):
        raise ValueError(f"compression method {cls.name!r}: checkpoint keys "
                         f"{sorted(keys & set(cls.checkpoint_keys))} are taken")
    METHODS.append(cls)
    METHODS.sort(key=lambda m: m.order)
    return cls


def methods_for(compress: CompressConfig) -> list[CompressionMethod]:
    """Fresh instances of the registered methods the section turns on, in plan order."""
    return [m for m in (cls.from_config(compress) for cls in METHODS) if m is not None]
