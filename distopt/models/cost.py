"""What one inference of a model costs a device besides flash: the RAM its activations need
(``peak_ram_bytes``) and its multiply-accumulates (``macs``, and ``nonzero_macs``: those a
kernel that skips zero weights would still do). Measured on the module itself, batch 1, by
following one forward pass layer by layer (forward hooks on the leaf modules), so it holds for
any family, the user's too.

The rules:

- **Peak RAM**: layers run one after another, each reading its input buffer and writing its
  output buffer; the peak is the largest input + output of any layer (the model's input
  counted as the first layer's input). Layers whose output is their input (an in-place ReLU,
  dropout at inference, a flatten) add nothing. Values are ``activation_bytes`` wide (4:
  float32, today's models; 1 for int8 activations), integer inputs (token ids) 4 bytes.
  Not counted: a kernel's scratch (im2col), the runtime's own state. A model with branches
  (residual connections) keeps more buffers live than this counts.
- **MACs**: a conv's ``H_out * W_out * C_out * (C_in / groups) * k_h * k_w``, a dense layer's
  ``in * out`` per row, a recurrent layer's ``(|W_ih| + |W_hh|)`` per time step, a pairwise
  dot interaction's ``d`` per pair; embeddings, pooling and activations do no
  multiply-accumulates. ``nonzero_macs`` counts only the
  non-zero weights' ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distopt import metrics as M
from distopt.models.recsys import PairwiseDot
from distopt.models.spec import ModelSpec
from distopt.models.weights import example_input

__all__ = ["ALIASING", "LayerCall", "activation_cost", "trace"]

ALIASING = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity)  # output is (a view of) the input
INT_BYTES = 4  # an integer input value (a token id) on the device


def _buffer_bytes(x: Any, activation_bytes: int) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * (activation_bytes if x.is_floating_point() else INT_BYTES)
    if isinstance(x, (tuple, list)):
        return sum(_buffer_bytes(v, activation_bytes) for v in x)
    return 0


def _macs(m: nn.Module, inputs: tuple[Any, ...], out: Any) -> tuple[int, int]:
    """(dense, non-zero-weight) multiply-accumulates of one call of a leaf module."""
    if isinstance(m, nn.Conv2d):
        positions = out.shape[-2] * out.shape[-1] * out.shape[0]  # batch 1: H_out * W_out
        return positions * m.weight.numel(), positions * int((m.weight != 0).sum())
    if isinstance(m, nn.Linear):
        rows = out.numel() // m.out_features
        return rows * m.weight.numel(), rows * int((m.weight != 0).sum())
    if isinstance(m, nn.RNNBase):
        x = inputs[0]
        steps = x.shape[1] if m.batch_first else x.shape[0]
        weights = [p for name, p in m.named_parameters() if name.startswith("weight_")]
        return (steps * sum(w.numel() for w in weights),
                steps * sum(int((w != 0).sum()) for w in weights))
    if isinstance(m, PairwiseDot):  # weightless: its dense and non-zero counts agree
        v = inputs[0]
        pairs = m.pairs.numel() * v.shape[0] * v.shape[2]
        return pairs, pairs
    return 0, 0


@dataclass(frozen=True)
class LayerCall:
    """One call of a leaf module in a forward pass: the module, its inputs, its output."""

    module: nn.Module
    inputs: tuple[Any, ...]
    output: Any


@torch.no_grad()
def trace(model: nn.Module, spec: ModelSpec) -> list[LayerCall]:
    """The leaf modules in the order one batch-1 forward pass (a zero input, eval mode, the
    model's mode restored) calls them: what the costs here and the C export walk."""
    calls: list[LayerCall] = []

    def hook(m: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        calls.append(LayerCall(m, inputs, out))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        model(example_input(spec, 1).to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def activation_cost(model: nn.Module, spec: ModelSpec, activation_bytes: int = 4,
                    calls: list[LayerCall] | None = None) -> dict[str, int]:
    """``peak_ram_bytes``, ``macs`` and ``nonzero_macs`` of one batch-1 inference (``calls``:
    the model's :func:`trace`, if the caller has it)."""
    peak = macs = nonzero = 0
    for c in calls if calls is not None else trace(model, spec):
        if not isinstance(c.module, ALIASING):
            peak = max(peak, _buffer_bytes(c.inputs, activation_bytes) +
                       _buffer_bytes(c.output, activation_bytes))
        dense, nz = _macs(c.module, c.inputs, c.output)
        macs, nonzero = macs + dense, nonzero + nz
    return {M.PEAK_RAM_BYTES: peak, M.MACS: macs, M.NONZERO_MACS: nonzero}
