"""Model families as plain PyTorch modules. Nothing here knows of Ray or Optuna.

A :class:`ModelSpec` is the concrete architecture (every layer's width). The config describes a
family of them; structured weight pruning produces a narrower spec; the artifact stores the spec
so that a file alone rebuilds its model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from distopt.config import Config

__all__ = ["ModelSpec", "build_model", "spec_from_config", "seed_cnn", "count_params"]


@dataclass(frozen=True)
class ModelSpec:
    family: Literal["cnn", "mlp"]
    in_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    conv_channels: tuple[int, ...] = ()  # cnn: one conv 'valid' + max-pool 2 per entry
    dense_units: tuple[int, ...] = ()  # hidden dense layers before the classifier
    kernel_size: int = 3
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(family=d["family"], in_shape=tuple(d["in_shape"]),  # type: ignore[arg-type]
                   num_classes=int(d["num_classes"]),
                   conv_channels=tuple(int(c) for c in d["conv_channels"]),
                   dense_units=tuple(int(u) for u in d["dense_units"]),
                   kernel_size=int(d["kernel_size"]), dropout=float(d["dropout"]))

    def conv_out_side(self) -> tuple[int, int]:
        h, w = self.in_shape[1:]
        for _ in self.conv_channels:
            h, w = (h - self.kernel_size + 1) // 2, (w - self.kernel_size + 1) // 2
        return h, w


def spec_from_config(cfg: Config) -> ModelSpec:
    m, d = cfg.model, cfg.data
    in_shape = (int(d.shape[0]), int(d.shape[1]), int(d.shape[2]))
    if m.family == "cnn":
        return ModelSpec("cnn", in_shape, d.num_classes,
                         tuple(m.channels * 2 ** i for i in range(m.blocks)),
                         (m.dense_units,) * m.dense_layers, m.kernel_size,
                         cfg.regularization.dropout)
    return ModelSpec("mlp", in_shape, d.num_classes, (), (m.dense_units,) * m.blocks, 3,
                     cfg.regularization.dropout)


def seed_cnn(dropout: float = 0.0) -> ModelSpec:
    """The seed's Keras CNN: Conv32-Conv64 (3x3 valid, each + max-pool 2), Dense128, 10 classes.

    225,034 parameters."""
    return ModelSpec("cnn", (1, 28, 28), 10, (32, 64), (128,), 3, dropout)


class Net(nn.Module):
    """Conv blocks (conv 'valid' -> ReLU -> max-pool 2), then dense layers with dropout.

    Layers sit in two flat ``nn.Sequential``s so that weight pruning and the artifact can walk
    (conv_i, dense_j) by index."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.in_shape[0]
        convs: list[nn.Module] = []
        for out in spec.conv_channels:
            convs += [nn.Conv2d(c, out, spec.kernel_size), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*convs)
        h, w = spec.conv_out_side() if spec.conv_channels else spec.in_shape[1:]
        n = c * h * w
        dense: list[nn.Module] = [nn.Flatten()]
        for units in spec.dense_units:
            dense += [nn.Dropout(spec.dropout), nn.Linear(n, units), nn.ReLU(inplace=True)]
            n = units
        dense += [nn.Dropout(spec.dropout), nn.Linear(n, spec.num_classes)]
        self.classifier = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.classifier(self.features(x))  # (B, num_classes)


def build_model(spec: ModelSpec) -> Net:
    return Net(spec)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """Conv and Linear layers in forward order: the ones whose weights are pruned/quantized."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
