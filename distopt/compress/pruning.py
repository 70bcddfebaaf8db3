"""Weight pruning: global magnitude masks (unstructured), L1-norm channel/unit removal that
physically shrinks layers (structured), and the gradual sparsity schedule. Knows nothing of Ray."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from distopt.compress.method import CompressionMethod, register
from distopt.config import CompressConfig
from distopt.models import (GATES, Model, RecurrentNet, build_model, fold_batch_norm,
                            prunable_weights)

__all__ = ["HeldMasks", "Masks", "WeightPruning", "apply_masks", "device_masks",
           "global_magnitude_masks", "gradual_ratio", "mask_gradients", "structured_prune"]

Masks = dict[str, torch.Tensor]  # parameter name -> bool mask of the same shape


def _weights(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, w, _ in prunable_weights(model):
        yield name, w


def global_magnitude_masks(model: nn.Module, ratio: float) -> Masks:
    """Masks that remove the ``ratio`` smallest-magnitude weights across all weight matrices
    (conv, dense, recurrent, embedding: see :func:`distopt.models.prunable_weights`).

    Works on any memory format (``torch.nn.utils.prune`` fails on channels-last weights)."""
    named = list(_weights(model))
    if ratio <= 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in named}
    scores = torch.cat([w.detach().abs().flatten().float() for _, w in named])
    k = int(ratio * scores.numel())
    if k == 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in named}
    threshold = torch.kthvalue(scores.cpu(), k).values.item()
    masks = {n: w.detach().abs() > threshold for n, w in named}
    # Ties at the threshold can leave fewer than k removed; that is fine (never more than k).
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights (after every optimizer step, so Adam cannot revive them)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


@torch.no_grad()
def mask_gradients(model: nn.Module, masks: Masks | None) -> None:
    """Zero the gradients of masked weights: a pruned weight's gradient is thrown away by its
    mask after the step, so it must not count in the norm that clipping scales the others by."""
    if masks:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        for name, mask in masks.items():
            if name in grads:
                grads[name].mul_(mask.to(grads[name].dtype))


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    n_keep = max(1, math.ceil((1 - ratio) * scores.numel()))
    return torch.sort(torch.topk(scores, n_keep).indices).values


@torch.no_grad()
def structured_prune(model: Model, ratio: float) -> Model:
    """Remove the ``ratio`` lowest-L1-norm channels of every conv layer, units of every hidden
    dense layer and (rnn) embedding dimensions and hidden units of every recurrent layer,
    returning a physically smaller model with the surviving weights."""
    if isinstance(model, RecurrentNet):
        return _structured_prune_rnn(model, ratio)
    model = fold_batch_norm(model)
    spec = model.spec
    # State keys of the smaller model: the same layer positions, with fewer channels/units.
    convs = [(f"features.{k}.", m) for k, m in enumerate(model.features)
             if isinstance(m, nn.Conv2d)]
    denses = [(f"classifier.{k}.", m) for k, m in enumerate(model.classifier)
              if isinstance(m, nn.Linear)]
    state: dict[str, torch.Tensor] = {}
    keep_in = torch.arange(spec.in_shape[0])
    new_channels = []
    for key, conv in convs:
        w = conv.weight.contiguous()[:, keep_in]
        keep = _keep(w.abs().sum(dim=(1, 2, 3)).float(), ratio)
        state[f"{key}weight"] = w[keep]
        if conv.bias is not None:
            state[f"{key}bias"] = conv.bias[keep]
        new_channels.append(len(keep))
        keep_in = keep
    if convs:
        h, w_ = (1, 1) if spec.head == "gap" else spec.conv_out_side()
        # Flattened features are (channel, y, x): keep every spatial position of kept channels.
        keep_in = (keep_in[:, None] * (h * w_) + torch.arange(h * w_)[None]).flatten()
    else:
        keep_in = torch.arange(int(np.prod(spec.in_shape)))
    new_units = _prune_head(denses, keep_in, ratio, state)
    new = build_model(dataclasses.replace(spec, conv_channels=tuple(new_channels),
                                          dense_units=tuple(new_units)))
    new.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return new


def _prune_head(denses: list[tuple[str, nn.Linear]], keep_in: torch.Tensor, ratio: float,
                state: dict[str, torch.Tensor]) -> list[int]:
    """Prune hidden dense units (never the classifier's outputs) of ``(state key prefix,
    layer)`` pairs into ``state``; returns the new hidden widths."""
    new_units = []
    for i, (key, dense) in enumerate(denses):
        w = dense.weight[:, keep_in]
        last = i == len(denses) - 1
        keep = torch.arange(w.shape[0]) if last else _keep(w.abs().sum(1).float(), ratio)
        state[f"{key}weight"] = w[keep]
        if dense.bias is not None:
            state[f"{key}bias"] = dense.bias[keep]
        if not last:
            new_units.append(len(keep))
        keep_in = keep
    return new_units


def _structured_prune_rnn(model: RecurrentNet, ratio: float) -> RecurrentNet:
    """Embedding dimensions and recurrent hidden units, scored by the L1 norm of the weights
    that produce them (a unit's rows in every gate block of ``weight_ih`` and ``weight_hh``).

    Removing a unit is exact for a unit whose incoming weights and biases are zero: its state
    stays 0 in all three cells (tanh(0) = 0; GRU and LSTM keep 0 * 0.5 = 0), so it feeds
    nothing forward. A test checks the pruned model against the original with the removed units'
    incoming weights zeroed."""
    spec = model.spec
    state: dict[str, torch.Tensor] = {}
    embed_dim = 0
    if model.embedding is not None:
        w = model.embedding.weight
        keep_in = _keep(w.abs().sum(0).float(), ratio)
        state["embedding.weight"] = w[:, keep_in]
        embed_dim = len(keep_in)
    else:
        keep_in = torch.arange(spec.in_shape[0] * spec.in_shape[2])
    gates = GATES[spec.cell]
    new_units = []
    for i, layer in enumerate(model.recurrent):
        hidden = layer.hidden_size
        w_ih, w_hh = layer.weight_ih_l0[:, keep_in], layer.weight_hh_l0
        per_unit = (w_ih.abs().sum(1) + w_hh.abs().sum(1)).reshape(gates, hidden).sum(0)
        keep = _keep(per_unit.float(), ratio)
        rows = (torch.arange(gates)[:, None] * hidden + keep[None]).flatten()
        p = f"recurrent.{i}."
        state[p + "weight_ih_l0"], state[p + "weight_hh_l0"] = w_ih[rows], w_hh[rows][:, keep]
        state[p + "bias_ih_l0"], state[p + "bias_hh_l0"] = layer.bias_ih_l0[rows], \
            layer.bias_hh_l0[rows]
        new_units.append(len(keep))
        keep_in = keep
    denses = [(f"classifier.{k}.", m) for k, m in enumerate(model.classifier)
              if isinstance(m, nn.Linear)]
    new_dense = _prune_head(denses, keep_in, ratio, state)
    new = build_model(dataclasses.replace(spec, rnn_units=tuple(new_units),
                                          dense_units=tuple(new_dense), embed_dim=embed_dim))
    new.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return new  # type: ignore[return-value]

def gradual_ratio(final: float, k: int, total: int) -> float:
    """Sparsity for fine-tune epoch ``k`` of ``total`` under the cubic schedule of Zhu & Gupta
    (2017): fast at first, when many small weights can go, and slower towards ``final``,
    reached in the last epoch."""
    return final * (1 - (1 - (k + 1) / total) ** 3)


def device_masks(masks: Masks | None, device: torch.device) -> Masks | None:
    """Pruning masks as float multipliers on the parameters' device, made once: restored
    checkpoints hold them on the CPU, and a bool mask would be converted again every step."""
    if not masks:
        return masks
    return {k: v.to(device=device, dtype=torch.float32) for k, v in masks.items()}


class HeldMasks(CompressionMethod):
    """What a pruning method shares: masks (float multipliers on the weights' device) held
    through the fine-tune (re-applied after every step, their gradients left out of the
    clipped norm) and kept in the checkpoint under the method's one checkpoint key."""

    def __init__(self) -> None:
        self.masks: Masks | None = None

    def before_clip(self, model: Model) -> None:
        mask_gradients(model, self.masks)

    def after_step(self, model: Model) -> None:
        if self.masks:
            apply_masks(model, self.masks)

    def checkpoint(self) -> dict[str, Any]:
        return {self.checkpoint_keys[0]: {k: v.bool().cpu() for k, v in self.masks.items()}
                if self.masks else None}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.masks = device_masks(state.get(self.checkpoint_keys[0]), device)


@register
class WeightPruning(HeldMasks):
    """``compress.prune.ratio`` > 0: global magnitude masks held while fine-tuning (raised epoch
    by epoch with the gradual schedule), or structured pruning that shrinks the layers."""

    name = "pruning"
    order = 10
    checkpoint_keys = ("masks",)

    def __init__(self, ratio: float, kind: str, gradual: bool, epochs: int) -> None:
        super().__init__()
        self.ratio, self.kind, self.gradual, self.epochs = ratio, kind, gradual, epochs

    @classmethod
    def from_config(cls, compress: CompressConfig) -> WeightPruning | None:
        p = compress.prune
        if p.ratio == 0:
            return None
        gradual = p.schedule == "gradual" and p.kind == "unstructured"
        return cls(p.ratio, p.kind, gradual, compress.finetune_epochs)

    @property
    def fine_tunes(self) -> bool:
        return True

    def sparsity(self, k: int) -> float:
        """Sparsity of fine-tune epoch k (the gradual schedule raises it epoch by epoch)."""
        return gradual_ratio(self.ratio, k, max(self.epochs, 1)) if self.gradual else self.ratio

    def _prune(self, model: Model, ratio: float) -> tuple[Model, Masks]:
        """Structured pruning (a smaller model, no masks) or global magnitude masks applied in
        place (the masks, to hold while fine-tuning)."""
        if self.kind == "structured":
            return structured_prune(model, ratio), {}
        masks = global_magnitude_masks(model, ratio)
        apply_masks(model, masks)
        return model, masks

    def preview(self, model: Model) -> Model:
        return self._prune(model, self.ratio)[0]

    def begin(self, model: Model, device: torch.device) -> Model:
        model, masks = self._prune(model, self.sparsity(0))
        self.masks = device_masks(masks, device)
        return model

    def begin_epoch(self, model: Model, k: int, device: torch.device) -> None:
        if self.gradual:  # weights pruned before are 0, so they stay pruned
            self.masks = device_masks(global_magnitude_masks(model, self.sparsity(k)), device)
            apply_masks(model, self.masks)
