from __future__ import annotations

import torch

from distopt.augment import is_identity, random_affine
from distopt.config import AugmentConfig


def _batch() -> torch.Tensor:
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # a bar, so that moves are visible
    return x


def test_zero_strengths_are_the_identity():
    x = _batch()
    assert is_identity(AugmentConfig())
    assert random_affine(x, AugmentConfig(), torch.Generator()) is x


def test_seeded_and_per_sample():
    x = _batch()
    cfg = AugmentConfig(rotation=20, shift=0.1, shear=10, zoom=0.1)
    a = random_affine(x, cfg, torch.Generator().manual_seed(3))
    b = random_affine(x, cfg, torch.Generator().manual_seed(3))
    c = random_affine(x, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    # Every sample has its own transform.
    assert len({round(float(s.sum()), 3) for s in a}) > 8 or \
        len({tuple(s.nonzero()[0].tolist()) for s in a}) > 8


def test_shift_moves_content_within_bound():
    x = _batch()
    out = random_affine(x, AugmentConfig(shift=0.1), torch.Generator().manual_seed(0))
    com_in = (x[0, 0].nonzero().float().mean(0))
    moves = [(o[0].nonzero().float().mean(0) - com_in).abs().max().item() for o in out]
    assert max(moves) <= 0.1 * 28 + 1.0 and max(moves) > 0.5


def test_rotation_keeps_mass_roughly():
    x = _batch()
    out = random_affine(x, AugmentConfig(rotation=20), torch.Generator().manual_seed(0))
    ratio = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert torch.all((ratio > 0.85) & (ratio < 1.15))


def test_zoom_in_enlarges_and_zoom_out_shrinks():
    x = _batch()
    out = random_affine(x, AugmentConfig(zoom=0.5), torch.Generator().manual_seed(0))
    sizes = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert sizes.max() > 1.2 and sizes.min() < 0.8
