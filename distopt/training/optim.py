"""The optimizer and the learning-rate schedule of a run's dense and fine-tune phases."""

from __future__ import annotations

import math

import torch
from torch import nn

from distopt.config import Config

__all__ = ["lr_factor", "make_optimizer"]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier of step ``step`` of ``total`` (of a phase): a linear warm-up
    over ``warmup`` steps (large batches), times the cosine decay to 0 if ``schedule`` is
    cosine."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "constant":
        return ramp
    return ramp * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def make_optimizer(cfg: Config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    t, wd = cfg.train, cfg.regularization.l2
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum, weight_decay=wd)


