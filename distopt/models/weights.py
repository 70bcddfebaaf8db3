"""What the compression methods and the artifact walk in any model, built-in or the user's:
its weight matrices in forward order with their quantization axis, their layer kinds (for
mixed bit widths), parameter counts, and an example input of the spec."""

from __future__ import annotations

import torch
from torch import nn

from distopt.models.spec import ModelSpec

__all__ = ["count_params", "example_input", "layer_kinds", "prunable_weights"]


def example_input(spec: ModelSpec, batch: int = 1) -> torch.Tensor:
    """A zero input batch of the model's input shape and dtype (token ids are integers)."""
    if spec.tokens:
        return torch.zeros(batch, *spec.in_shape, dtype=torch.long)
    return torch.zeros(batch, *spec.in_shape)


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """The kind of every weight :func:`prunable_weights` lists, for mixed bit widths:
    ``first_conv`` (the first conv layer), ``conv`` (the others), ``classifier`` (the last
    dense layer), ``embedding`` (embedding tables), ``last_dense`` (the last hidden dense
    layer, where there are two or more) and ``dense`` (the other hidden dense layers and
    recurrent weights)."""
    names = [name for name, _, _ in prunable_weights(model)]
    convs = [f"{p}.weight" for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    denses = [f"{p}.weight" for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    tables = {f"{p}.weight" for p, m in model.named_modules() if isinstance(m, nn.Embedding)}
    kinds = {}
    for name in names:
        if convs and name == convs[0]:
            kinds[name] = "first_conv"
        elif name in convs:
            kinds[name] = "conv"
        elif name in tables:
            kinds[name] = "embedding"
        elif denses and name == denses[-1]:
            kinds[name] = "classifier"
        elif len(denses) > 2 and name == denses[-2]:
            kinds[name] = "last_dense"
        else:
            kinds[name] = "dense"
    return kinds


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """The weight matrices that are pruned, L1-penalized and quantized, in forward order, as
    ``(parameter name, parameter, quantization axis)``: conv, dense and recurrent weights get
    one scale per output row (axis 0); embeddings one per dimension (axis 1), because a scale
    per vocabulary row would cost more than the rows' 8-bit values save, unless the table has
    fewer rows than dimensions (then per row: whichever needs fewer scales). Biases are
    excluded."""
    out = []
    for prefix, m in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out.append((f"{dot}weight", m.weight, 0))
        elif isinstance(m, nn.Embedding):
            out.append((f"{dot}weight", m.weight,
                        0 if m.num_embeddings < m.embedding_dim else 1))
        elif isinstance(m, nn.RNNBase):
            for name, p in m.named_parameters():
                if name.startswith("weight_"):
                    out.append((f"{dot}{name}", p, 0))
    return out
