"""The conv families (``cnn``; ``conv1d``: the same along L for 1-D signals) and the dense
one (``mlp``): :class:`Net`, a plain PyTorch module that knows nothing of training, and the
families that describe it from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distopt.models.family import Family, register_family
from distopt.models.spec import ModelSpec
from distopt.shapes import VALID

if TYPE_CHECKING:
    from distopt.config import Config

__all__ = ["Conv1dFamily", "ConvFamily", "MlpFamily", "Net", "dense_head", "seed_cnn"]


def seed_cnn(dropout: float = 0.0) -> ModelSpec:
    """The seed's Keras CNN: Conv32-Conv64 (3x3 valid, each + max-pool 2), Dense128, 10 classes.

    225,034 parameters."""
    return ModelSpec("cnn", (1, 28, 28), 10, (32, 64), (128,), 3, dropout)


def dense_head(n: int, units: tuple[int, ...], num_classes: int, dropout: float,
               bias: bool = True) -> nn.Sequential:
    """Flatten, then hidden dense layers (dropout, linear, ReLU) and the classifier."""
    dense: list[nn.Module] = [nn.Flatten()]
    for u in units:
        dense += [nn.Dropout(dropout), nn.Linear(n, u, bias=bias), nn.ReLU(inplace=True)]
        n = u
    dense += [nn.Dropout(dropout), nn.Linear(n, num_classes, bias=bias)]
    return nn.Sequential(*dense)


class Net(nn.Module):
    """Conv blocks (conv -> [BatchNorm] -> ReLU -> max-pool 2), then either the flattened
    features or their global average per channel (``head: gap``), then dense layers with
    dropout. Family ``mlp`` has no conv blocks.

    Block kinds (``spec.block``): ``plain`` convs are 'valid' (the seed's); ``same`` convs pad
    ``k // 2`` so that only pooling shrinks the map (more blocks fit a small input);
    ``separable`` blocks after the first are depthwise-separable (MobileNet): a ``k x k``
    depthwise conv (one filter per channel, 'same', no bias) then a ``1 x 1`` pointwise conv,
    about ``k * k`` times fewer weights than a full conv; the first block stays a full 'same'
    conv (a depthwise conv of a one-channel image would learn a single filter). ``depthwise``
    blocks after the first are the depthwise conv alone, with its bias, so every block keeps the
    first one's channels (BitNetMCU's small CNNs): ``k * k`` weights per channel, no mixing of
    channels until the dense head. ``bitnet`` is ``depthwise`` in BitNetMCU's geometry: every
    conv unpadded ('valid'), and the first block not pooled (conv, depthwise conv, pool,
    depthwise conv, pool: 16 x 16 -> 14 -> 12 -> 6 -> 4 -> 2). With ``spec.bias`` False no layer has a bias (BitNetMCU's):
    a device keeps no int32 bias per output channel.

    Family ``conv1d`` is the same network for 1-D signals ``(C, 1, L)``: kernels ``1 x k`` and
    pooling ``1 x 2`` run along L only. Keeping them ``Conv2d`` of height 1 (the same function
    as ``Conv1d``) lets weight pruning, quantization, the artifact and ONNX export treat both
    families alike.

    Layers sit in two flat ``nn.Sequential``s so that weight pruning and the artifact can walk
    (conv_i, dense_j) by index."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.in_shape[0]
        kernel = spec.conv_kernel
        pad = (0, 0) if spec.block in VALID else (kernel[0] // 2, kernel[1] // 2)
        convs: list[nn.Module] = []
        for i, out in enumerate(spec.conv_channels):
            if spec.block == "separable" and i > 0:
                # No bias on the depthwise conv: with nothing non-linear before the pointwise
                # conv, the pointwise bias absorbs it (and the file stores fewer floats).
                convs += [nn.Conv2d(c, c, kernel, padding=pad, groups=c, bias=False),
                          nn.Conv2d(c, out, 1, bias=spec.bias)]
            elif spec.block in ("depthwise", "bitnet") and i > 0:
                if out != c:
                    raise ValueError(f"depthwise blocks keep the channels: block {i} has {out} "
                                     f"after {c}")
                convs.append(nn.Conv2d(c, c, kernel, padding=pad, groups=c, bias=spec.bias))
            else:
                convs.append(nn.Conv2d(c, out, kernel, padding=pad, bias=spec.bias))
            if spec.batch_norm:
                convs.append(nn.BatchNorm2d(out))
            convs.append(nn.ReLU(inplace=True))
            if not (spec.block == "bitnet" and i == 0):  # BitNetMCU's first pool: after conv 2
                convs.append(nn.MaxPool2d(spec.pool))
            c = out
        if spec.head == "gap" and spec.conv_channels:
            convs.append(nn.AdaptiveAvgPool2d(1))  # (B, C, 1, 1): one value per channel
            h = w = 1
        else:
            h, w = spec.conv_out_side() if spec.conv_channels else spec.in_shape[1:]
        self.features = nn.Sequential(*convs)
        self.classifier = dense_head(c * h * w, spec.dense_units, spec.num_classes, spec.dropout,
                                     spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.classifier(self.features(x))  # (B, num_classes)



@register_family
class ConvFamily(Family):
    """``cnn``: conv blocks (each doubling ``model.channels``) + dense head."""

    name = "cnn"
    channels_last = True

    def spec(self, cfg: Config) -> ModelSpec:
        m, d = cfg.model, cfg.data
        return ModelSpec(self.name, tuple(int(v) for v in d.model_shape), d.num_classes,
                         tuple(m.channels * (1 if m.block in ("depthwise", "bitnet") else 2 ** i)
                               for i in range(m.blocks)),
                         m.dense_widths(m.dense_layers), m.kernel_size,
                         cfg.regularization.dropout, batch_norm=m.batch_norm, head=m.head,
                         block=m.block, bias=m.bias)

    def build(self, spec: ModelSpec) -> Net:
        return Net(spec)


@register_family
class Conv1dFamily(ConvFamily):
    """``conv1d``: the cnn along L for signals ``(C, 1, L)`` (kernels ``1 x k``)."""

    name = "conv1d"


@register_family
class MlpFamily(Family):
    """``mlp``: ``model.blocks`` hidden dense layers of ``model.dense_units``."""

    name = "mlp"

    def spec(self, cfg: Config) -> ModelSpec:
        m, d = cfg.model, cfg.data
        return ModelSpec(self.name, tuple(int(v) for v in d.model_shape), d.num_classes, (),
                         m.dense_widths(m.blocks), 3, cfg.regularization.dropout,
                         bias=m.bias)

    def build(self, spec: ModelSpec) -> Net:
        return Net(spec)
