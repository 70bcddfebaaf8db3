"""Batched augmentation on the training device: random affine transforms for images
(rotation, shift, shear, zoom) and random cropping and token dropout for token sequences.

One ``affine_grid`` + ``grid_sample`` call transforms a whole batch, each sample with its own
random matrix, so the cost stays a small fraction of a training step. Units follow Keras'
``ImageDataGenerator``: rotation and shear in degrees (uniform in +-value), shift as a fraction
of width/height, zoom ``z`` as independent x/y scales in ``[1 - z, 1 + z]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distopt.config import AugmentConfig

__all__ = ["random_affine", "random_tokens", "is_identity"]


def is_identity(cfg: AugmentConfig) -> bool:
    return cfg.prob == 0 or (cfg.rotation == 0 and cfg.shift == 0 and cfg.shear == 0
                             and cfg.zoom == 0)


def _uniform(n: int, bound: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=g, device=device) * 2 - 1) * bound


def random_affine(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Transform a float batch ``(B, C, H, W)``; returns a new tensor of the same shape. A
    batch of 1-D signals ``(B, C, 1, L)`` is only shifted, along L.

    With ``cfg.prob < 1`` each sample is transformed with that chance and otherwise returned
    unchanged, bit for bit (one more draw per sample; at 1 the draws are as they always were).

    ``generator`` must live on ``x.device``; seeding it makes the augmentation reproducible."""
    if is_identity(cfg):
        return x
    b, dev = x.shape[0], x.device
    rot = _uniform(b, math.radians(cfg.rotation), generator, dev)
    shear = _uniform(b, math.radians(cfg.shear), generator, dev)
    # affine_grid works in normalized [-1, 1] coordinates: a shift of f * width is 2f.
    tx = _uniform(b, 2 * cfg.shift, generator, dev)
    ty = _uniform(b, 2 * cfg.shift, generator, dev)
    if x.shape[2] == 1:  # a 1-D signal (C, 1, L) shifts along L only
        ty = torch.zeros_like(ty)
    zx = 1 + _uniform(b, cfg.zoom, generator, dev)
    zy = 1 + _uniform(b, cfg.zoom, generator, dev)
    cos, sin = torch.cos(rot), torch.sin(rot)
    one, zero = torch.ones_like(rot), torch.zeros_like(rot)

    def mat(a: torch.Tensor, b_: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.stack([a, b_], 1), torch.stack([c, d], 1)], 1)  # (B, 2, 2)

    # theta maps output coordinates to input coordinates, composed as Keras does:
    # rotation, then shear, then zoom. Dividing by zoom > 1 samples a smaller input window,
    # which enlarges the digit.
    linear = mat(cos, -sin, sin, cos) @ mat(one, -torch.sin(shear), zero, torch.cos(shear)) \
        @ mat(1 / zx, zero, zero, 1 / zy)
    theta = torch.cat([linear, torch.stack([tx, ty], 1)[:, :, None]], 2)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.prob < 1:
        chosen = torch.rand(b, generator=generator, device=dev) < cfg.prob
        out = torch.where(chosen[:, None, None, None], out, x)
    return out


def random_tokens(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Crop and drop tokens of a front-padded id batch ``(B, L)`` (0 = padding).

    Cropping cuts ``floor(u * crop * length)`` ids (u uniform in [0, 1)) from the start or,
    with equal odds, from the end of each sequence's real tokens and re-pads it at the front;
    token dropout then replaces each id by padding with probability ``token_dropout``. Both keep
    the order of what remains, which is what a sequence model must read."""
    if cfg.crop == 0 and cfg.token_dropout == 0:
        return x
    b, length = x.shape
    dev = x.device
    pos = torch.arange(length, device=dev)
    if cfg.crop:
        nonzero = x != 0
        # First real position; length for an all-padding row.
        start = torch.where(nonzero.any(1), nonzero.int().argmax(1),
                            torch.full((b,), length, device=dev))
        cut = (torch.rand(b, generator=generator, device=dev) * cfg.crop
               * (length - start)).long()
        from_end = torch.rand(b, generator=generator, device=dev) < 0.5
        shift = cut * from_end  # cutting the end = shifting right by `cut`
        x = x.gather(1, (pos[None] - shift[:, None]).clamp(min=0))
        x = x * (pos[None] >= (start + cut)[:, None])
    if cfg.token_dropout:
        x = x * (torch.rand(b, length, generator=generator, device=dev) >= cfg.token_dropout)
    return x
