"""A run's compression methods (:mod:`distopt.compress.method`), called in plan order: the one
place training meets them. The run calls these hooks and names no method, so a registered
method (pruning, quantization, clustering, a user's own) needs no edit here or in the run."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, ContextManager

import torch

from distopt import metrics as M
from distopt.compress import decode, device_report, encode
from distopt.compress.coding import Coding
from distopt.compress.method import CompressionMethod, methods_for
from distopt.config import CompressConfig
from distopt.models import Model, example_input, fold_batch_norm

__all__ = ["Compression"]


class Compression:
    """The compression of one run: fresh method instances for its ``compress`` section (their
    state, such as pruning masks, belongs to this run) and the artifact they code."""

    def __init__(self, settings: CompressConfig) -> None:
        self.settings = settings
        self.methods = methods_for(settings)

    @property
    def fine_tunes(self) -> bool:
        """Whether any method needs the fine-tune epochs after dense training."""
        return any(m.fine_tunes for m in self.methods)

    @property
    def finetune_epochs(self) -> int:
        return self.settings.finetune_epochs if self.fine_tunes else 0

    def codings(self, model: Model) -> dict[str, Coding]:
        """Every weight's coding: each method claims its weights, in plan order."""
        codings: dict[str, Coding] = {}
        for m in self.methods:
            m.claim_codings(model, codings)
        return codings

    def encode(self, model: Model, meta: dict[str, Any] | None) -> bytes:
        """The artifact of ``model`` (BatchNorm folded) under this run's codings (the file's
        other tensors are float16 beside quantized weights, float32 beside float ones), with
        what the methods add to its meta."""
        meta = dict(meta or {})
        for m in self.methods:
            meta.update(m.meta())
        return encode(model, self.settings.quantize.bits, meta, codings=self.codings(model))

    @property
    def calibrates(self) -> bool:
        """Whether any method calibrates on training inputs (so the run need not make them)."""
        return any(type(m).calibrate is not CompressionMethod.calibrate for m in self.methods)

    def calibrate(self, model: Model, x: torch.Tensor | None) -> None:
        """Every method's calibration on the training inputs ``x`` (normalized; None: no
        method calibrates)."""
        if x is None:
            return
        codings = self.codings(model)
        for m in self.methods:
            m.calibrate(model, x, codings)

    def expected(self, model: Model, meta: dict[str, Any] | None = None,
                 calibration: torch.Tensor | None = None) -> dict[str, float]:
        """What early stopping ranks a trial by at a rung (``metrics.RUNG_KEYS``): the size and
        device costs of the artifact this dense model would give with the run's compression
        applied now (every method's :meth:`preview`, then encoded as at the end, without the
        fine-tune). Fine-tuning changes weights, not which are zero or how they are coded, so
        the final file's size differs from this only by how well the fine-tuned values
        compress, and its flash, RAM and MACs not at all (tested). ``calibration``: the run's
        calibration inputs, which an integer model's preview is calibrated on (without them,
        on one zero input: its grids are then placeholders, but an integer model's flash,
        RAM and MACs do not depend on them, only its few bytes of meta do)."""
        base = fold_batch_norm(copy.deepcopy(model).cpu().float().eval()
                               .to(memory_format=torch.contiguous_format))
        for m in self.methods:
            base = m.preview(base)
        if calibration is None and self.calibrates:
            calibration = example_input(base.spec, 1)
        self.calibrate(base, calibration.cpu() if calibration is not None else None)
        artifact = self.encode(base, meta)
        now = {M.SIZE_BYTES: len(artifact), **device_report(decode(artifact))}
        return {M.RUNG_KEYS[k]: float(v) for k, v in now.items() if k in M.RUNG_KEYS}

    def begin(self, model: Model, device: torch.device) -> Model:
        for m in self.methods:
            model = m.begin(model, device)
        return model

    def begin_epoch(self, model: Model, k: int, device: torch.device) -> None:
        for m in self.methods:
            m.begin_epoch(model, k, device)

    def before_clip(self, model: Model) -> None:
        for m in self.methods:
            m.before_clip(model)

    def after_step(self, model: Model) -> None:
        for m in self.methods:
            m.after_step(model)

    def forward_view(self, model: Model) -> ContextManager[Any]:
        """Every method's view of the weights (made once an epoch; entered around every step
        and evaluation), entered in plan order and left in reverse."""
        codings = self.codings(model)
        views = [v for v in (m.forward_view(model, codings) for m in self.methods)
                 if not isinstance(v, contextlib.nullcontext)]
        return views[0] if len(views) == 1 else _Views(views)

    def checkpoint(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.methods:
            out.update(m.checkpoint())
        return out

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        for m in self.methods:
            m.restore(state, device)


class _Views:
    """Several re-enterable views as one re-enterable context."""

    def __init__(self, views: list[ContextManager[Any]]) -> None:
        self.views = views
        self.stack: contextlib.ExitStack | None = None

    def __enter__(self) -> _Views:
        self.stack = contextlib.ExitStack()
        for view in self.views:
            self.stack.enter_context(view)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.stack is not None
        self.stack.__exit__(*exc)
        self.stack = None
