from __future__ import annotations

import torch

from distopt.augment import is_identity, random_affine, random_tokens
from distopt.config import AugmentConfig


def _batch() -> torch.Tensor:
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # a bar, so that moves are visible
    return x


def test_zero_strengths_are_the_identity():
    x = _batch()
    assert is_identity(AugmentConfig())
    assert random_affine(x, AugmentConfig(), torch.Generator()) is x


def test_a_share_of_the_batch_is_transformed_and_the_rest_left_exactly_as_it_was():
    """augment.prob: each sample is transformed with that chance; the others come back bit for
    bit; prob 1 draws exactly as before it existed, and prob 0 is the identity."""
    x = torch.rand(4000, 1, 8, 8)
    cfg = AugmentConfig(rotation=30, shift=0.2)
    full = random_affine(x, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(full, random_affine(x, AugmentConfig(rotation=30, shift=0.2, prob=1.0),
                                           torch.Generator().manual_seed(5)))
    assert not (full == x).flatten(1).all(1).any()  # at prob 1 every sample moves
    half = random_affine(x, AugmentConfig(rotation=30, shift=0.2, prob=0.3),
                         torch.Generator().manual_seed(5))
    clean = (half == x).flatten(1).all(1)
    # The transformed ones are the prob-1 transforms (the same matrices were drawn first).
    assert torch.equal(half[~clean], full[~clean])
    assert abs(float((~clean).float().mean()) - 0.3) < 0.03  # 4000 draws: sd 0.007
    zero = AugmentConfig(rotation=30, shift=0.2, prob=0.0)
    assert is_identity(zero) and random_affine(x, zero, torch.Generator()) is x


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


def _major_axis_degrees(img: torch.Tensor) -> float:
    """Angle of the image mass's major axis from the vertical, from its second moments."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = img / img.sum()
    my, mx = (w * ys).sum(), (w * xs).sum()
    mu_yy = (w * (ys - my) ** 2).sum()
    mu_xx = (w * (xs - mx) ** 2).sum()
    mu_xy = (w * (xs - mx) * (ys - my)).sum()
    return float(torch.rad2deg(0.5 * torch.atan2(2 * mu_xy, mu_yy - mu_xx)))


def test_rotation_turns_each_sample_by_up_to_the_configured_angle():
    x = _batch()  # a vertical bar: its major axis is at 0 degrees
    assert abs(_major_axis_degrees(x[0, 0])) < 1e-3
    out = random_affine(x, AugmentConfig(rotation=20), torch.Generator().manual_seed(0))
    angles = [abs(_major_axis_degrees(o[0])) for o in out]
    # Within +-20 degrees (2 of slack for resampling the 8x4 bar on the pixel grid), and
    # actually turned: a rotation that did nothing, or far less than asked, fails here.
    assert max(angles) <= 22 and max(angles) > 12
    assert sum(a > 3 for a in angles) >= 10
    ratio = out.sum((1, 2, 3)) / x.sum((1, 2, 3))  # bilinear resampling keeps the mass
    assert torch.all((ratio > 0.85) & (ratio < 1.15))


def test_zoom_in_enlarges_and_zoom_out_shrinks():
    x = _batch()
    out = random_affine(x, AugmentConfig(zoom=0.5), torch.Generator().manual_seed(0))
    sizes = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert sizes.max() > 1.2 and sizes.min() < 0.8


def _tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 33, (64,), generator=g)
    x = torch.randint(1, 1000, (64, 32), generator=g)
    return x * (torch.arange(32)[None] >= 32 - lengths[:, None])  # front-padded


def test_token_crop_keeps_a_contiguous_front_padded_part():
    x = _tokens()
    out = random_tokens(x, AugmentConfig(crop=0.5), torch.Generator().manual_seed(1))
    assert random_tokens(x, AugmentConfig(), torch.Generator()) is x
    changed = 0
    for row, new in zip(x.tolist(), out.tolist()):
        real = [t for t in row if t]
        kept = [t for t in new if t]
        first = next((i for i, t in enumerate(new) if t), len(new))
        assert all(t for t in new[first:])  # padding only at the front
        assert len(kept) >= len(real) - int(0.5 * len(real))
        # what remains is a contiguous piece at the start or end of the original
        assert kept == real[:len(kept)] or kept == real[len(real) - len(kept):]
        changed += kept != real
    assert changed > 30
    again = random_tokens(x, AugmentConfig(crop=0.5), torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_token_dropout_rate_and_order():
    x = _tokens()
    out = random_tokens(x, AugmentConfig(token_dropout=0.2), torch.Generator().manual_seed(3))
    real = x != 0
    dropped = (out[real] == 0).float().mean().item()
    assert 0.15 < dropped < 0.25
    assert torch.equal(out[out != 0], x[out != 0])  # survivors keep their place


def test_one_dimensional_signals_shift_along_their_length_only():
    """A (C, 1, L) signal keeps its values, moved along L; a vertical shift would instead
    blend its single row with the zero padding and shrink it."""
    x = torch.zeros(32, 2, 1, 64)
    x[:, :, :, 28:36] = 1.0  # a pulse, 8 steps wide
    out = random_affine(x, AugmentConfig(shift=0.1), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Pixel-aligned shifts keep the pulse's peak at 1; sub-pixel ones split at most one step
    # between two neighbours, so its total stays 8 (nothing leaks to other rows).
    torch.testing.assert_close(out.sum(dim=3), torch.full((32, 2, 1), 8.0), atol=1e-4,
                               rtol=0)
    centers = (out[:, 0, 0] * torch.arange(64)).sum(1) / out[:, 0, 0].sum(1)
    assert centers.std() > 1.0  # samples moved by different amounts along L


def test_shear_is_in_degrees_as_keras_reads_it():
    """A vertical line sheared by up to 30 degrees leans by up to sin(30) = 0.5 pixels per
    row: neither 0 (shear ignored) nor up to 1 (30 read as radians)."""
    import math

    import torch

    from distopt.augment import random_affine
    from distopt.config import AugmentConfig

    x = torch.zeros(256, 1, 64, 64)
    x[:, :, :, 32] = 1.0
    out = random_affine(x, AugmentConfig(shear=30), torch.Generator().manual_seed(0))
    cols = torch.arange(64, dtype=torch.float32)
    rows = torch.arange(12, 52)
    mass = out[:, 0, rows, :]  # (B, rows, W)
    centre = (mass * cols).sum(-1) / mass.sum(-1).clamp(min=1e-6)  # x of the line per row
    y = rows.float() - rows.float().mean()
    slope = ((centre - centre.mean(1, keepdim=True)) * y).sum(1) / (y * y).sum()
    steepest = float(slope.abs().max())
    assert 0.45 < steepest <= math.sin(math.radians(30)) + 0.02, steepest
