"""BatchNorm folded into the convs before it: what pruning fine-tunes and what the artifact
stores, so the decoded file reproduces the trained function."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from distopt.models.convnet import Net

__all__ = ["fold_batch_norm"]


@torch.no_grad()
def fold_batch_norm(model: Net) -> Net:
    """The same function without BatchNorm: each BN's running statistics and affine parameters
    folded into the preceding conv (``w * g / s``, ``(b - mean) * g / s + beta`` with
    ``s = sqrt(var + eps)``). Exact in eval mode; what pruning fine-tunes and what the artifact
    stores, so the decoded file reproduces it."""
    if not model.spec.batch_norm:
        return model
    new = Net(dataclasses.replace(model.spec, batch_norm=False))
    # Each BatchNorm folds into the conv just before it (the pointwise one of a separable
    # block); convs without one are copied.
    new_convs = iter(m for m in new.features if isinstance(m, nn.Conv2d))
    last: tuple[nn.Conv2d, nn.Conv2d] | None = None
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            last = (m, next(new_convs))
            last[1].weight.copy_(m.weight)
            if m.bias is not None:
                last[1].bias.copy_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and last is not None:
            conv, dst = last
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            dst.weight.copy_(conv.weight * scale[:, None, None, None])
            dst.bias.copy_((conv.bias - m.running_mean) * scale + m.bias)
    new.classifier.load_state_dict(model.classifier.state_dict())
    return new.train(model.training)


