"""Embedding row pruning (``compress.prune_rows``): the rows of every embedding table with the
lowest L2 norms are set to zero and held there while fine-tuning. A row's norm is small when
few training rows moved it from its small initialization (the recsys family's and the rnn's
tables start at +-0.05): ids seen seldom or never, whose rows cost as many bytes as the
popular ones'. The artifact's sparse index coding stores a zero row in a few bits
(:mod:`distopt.compress.codings`); the device's flash count (:mod:`distopt.compress.flash`)
still counts every row, as a kernel that looks rows up in place needs them. Knows nothing of
Ray."""

from __future__ import annotations

import math
import torch
from torch import nn

from distopt.compress.method import register
from distopt.compress.pruning import HeldMasks, Masks, apply_masks, device_masks
from distopt.config import CompressConfig
from distopt.models import Model

__all__ = ["RowPruning", "row_masks"]


@torch.no_grad()
def row_masks(model: nn.Module, ratio: float) -> Masks:
    """For every embedding table, a mask that keeps all but its ``ratio`` lowest-L2-norm rows
    (at least one row kept)."""
    masks: Masks = {}
    for prefix, m in model.named_modules():
        if not isinstance(m, nn.Embedding):
            continue
        w = m.weight.detach()
        n_drop = min(int(math.floor(ratio * w.shape[0])), w.shape[0] - 1)
        keep = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        if n_drop > 0:
            keep[torch.argsort(w.float().norm(dim=1))[:n_drop]] = False
        masks[f"{prefix}.weight" if prefix else "weight"] = keep[:, None].expand_as(w).clone()
    return masks


@register
class RowPruning(HeldMasks):
    """``compress.prune_rows.ratio`` > 0: zero rows fixed when dense training ends (after any
    weight pruning), held through the fine-tune."""

    name = "row_pruning"
    order = 11  # after weight pruning, before clustering and quantization
    checkpoint_keys = ("row_masks",)

    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    @classmethod
    def from_config(cls, compress: CompressConfig) -> RowPruning | None:
        return cls(compress.prune_rows.ratio) if compress.prune_rows.ratio > 0 else None

    @property
    def fine_tunes(self) -> bool:
        return True

    def preview(self, model: Model) -> Model:
        apply_masks(model, row_masks(model, self.ratio))
        return model

    def begin(self, model: Model, device: torch.device) -> Model:
        masks = row_masks(model, self.ratio)
        apply_masks(model, masks)
        self.masks = device_masks(masks, device)
        return model
