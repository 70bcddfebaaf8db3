"""The compression steps a run applies to its weights, under the config's
:class:`~distopt.config.CompressionPlan`: weight pruning (structured, or global magnitude masks
held while fine-tuning), every weight's bit width, and the artifact size a dense model would
give now (what early stopping ranks trials by at its rungs)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distopt.compress import Masks, apply_masks, encode, global_magnitude_masks, structured_prune
from distopt.config import CompressionPlan
from distopt.models import Model, fold_batch_norm, layer_kinds

__all__ = ["device_masks", "expected_size", "weight_bits", "weight_prune"]


def device_masks(masks: Masks | None, device: torch.device) -> Masks | None:
    """Pruning masks as float multipliers on the parameters' device, made once: restored
    checkpoints hold them on the CPU, and a bool mask would be converted again every step."""
    if not masks:
        return masks
    return {k: v.to(device=device, dtype=torch.float32) for k, v in masks.items()}



def expected_size(model: Model, plan: CompressionPlan, meta: dict[str, Any] | None = None
                  ) -> int:
    """Bytes of the artifact this dense model would give with the trial's compression applied
    now (pruned, quantized and encoded as at the end, without the fine-tune). Fine-tuning
    changes weights, not which are zero or the bit width, so the final file differs from this
    only by how well the fine-tuned values compress (tested)."""
    base = fold_batch_norm(copy.deepcopy(model).cpu().float().eval()
                           .to(memory_format=torch.contiguous_format))
    if plan.prunes:
        base, _ = weight_prune(base, plan.prune_kind, plan.prune_ratio)
    return len(encode(base, plan.quant_bits, meta, weight_bits(base, plan)))


def weight_bits(model: nn.Module, plan: CompressionPlan) -> dict[str, int]:
    """Every weight's bits under the plan (its layer kind's, else ``quant_bits``)."""
    return {name: plan.bits_of(kind) for name, kind in layer_kinds(model).items()}


def weight_prune(model: Model, kind: str, ratio: float) -> tuple[Model, Masks]:
    """Structured pruning (a smaller model, no masks) or global magnitude masks applied in
    place (the masks, to hold while fine-tuning): the one pruning step of the loop and of
    :func:`expected_size`."""
    if kind == "structured":
        return structured_prune(model, ratio), {}
    masks = global_magnitude_masks(model, ratio)
    apply_masks(model, masks)
    return model, masks

