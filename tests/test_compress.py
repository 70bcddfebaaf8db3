from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distopt.compress import (ArtifactError, apply_masks, decode, encode, global_magnitude_masks,
                              quantize_per_channel, size_report, structured_prune)
from distopt.models import ModelSpec, build_model, seed_cnn


def _model(seed: int = 0, spec: ModelSpec | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec or seed_cnn()).eval()


X = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _dequantized_reference(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """The same weights quantized independently of the codec: what decode must reproduce."""
    ref = build_model(model.spec).eval()
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("weight") and bits < 32:
            q, scale = quantize_per_channel(t.numpy(), bits)
            t = torch.from_numpy((q.reshape(len(q), -1) * scale[:, None]).reshape(t.shape)
                                 .astype(np.float32))
        state[name] = t
    ref.load_state_dict(state)
    return ref


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_round_trip_gives_the_same_predictions(bits):
    m = _model()
    apply_masks(m, global_magnitude_masks(m, 0.7))
    dec = decode(encode(m, bits)).model
    ref = _dequantized_reference(m, bits)
    with torch.no_grad():
        torch.testing.assert_close(dec(X), ref(X), rtol=1e-5, atol=1e-5)
        if bits == 32:
            assert torch.equal(dec(X), m(X))
    assert torch.equal(dec(X).argmax(1), ref(X).argmax(1))


def test_sparsity_survives_and_shrinks_the_file():
    m = _model()
    dense = len(encode(m, 8))
    masks = global_magnitude_masks(m, 0.9)
    apply_masks(m, masks)
    data = encode(m, 8)
    dec = decode(data).model
    rep = size_report(dec, data)
    assert rep["nonzero_params"] <= 0.1 * rep["params"] + 300  # biases stay dense
    assert len(data) < dense / 4
    assert rep["size_bytes"] == len(data)
    assert rep["dense_fp32_bytes"] == 4 * 225_034


def test_magnitude_masks_remove_the_smallest():
    m = _model()
    masks = global_magnitude_masks(m, 0.5)
    kept = torch.cat([p.detach().abs()[masks[n]] for n, p in m.named_parameters() if n in masks])
    dropped = torch.cat([p.detach().abs()[~masks[n]] for n, p in m.named_parameters()
                         if n in masks])
    assert dropped.max() <= kept.min()
    total = sum(v.numel() for v in masks.values())
    assert abs(len(dropped) / total - 0.5) < 1e-3


def test_masks_work_on_channels_last_weights():
    m = _model().to(memory_format=torch.channels_last)
    masks = global_magnitude_masks(m, 0.5)
    apply_masks(m, masks)
    assert all((p[~masks[n]] == 0).all() for n, p in m.named_parameters() if n in masks)


def test_structured_pruning_shrinks_layers_and_keeps_the_function_at_zero():
    m = _model()
    same = structured_prune(m, 0.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(X), m(X))
    small = structured_prune(m, 0.5)
    assert small.spec.conv_channels == (16, 32) and small.spec.dense_units == (64,)
    assert small(X).shape == (32, 10)
    # The kept channels are the largest by L1 norm.
    conv0 = m.features[0].weight.detach()
    norms = conv0.abs().sum((1, 2, 3))
    kept = small.features[0].weight.detach()
    assert kept.abs().sum((1, 2, 3)).min() >= norms.sort(descending=True).values[15] - 1e-6


def test_structured_pruning_mlp():
    m = _model(spec=ModelSpec("mlp", (1, 28, 28), 10, (), (300, 100)))
    small = structured_prune(m, 0.75)
    assert small.spec.dense_units == (75, 25)
    assert small(X).shape == (32, 10)


def test_quantization_error_is_at_most_half_a_step():
    w = np.random.default_rng(0).normal(size=(8, 50)).astype(np.float32)
    for bits in (16, 8, 4):
        q, scale = quantize_per_channel(w, bits)
        err = np.abs(q * scale[:, None] - w)
        assert np.all(err <= scale[:, None] / 2 + 1e-7)
        assert np.abs(q).max() <= 2 ** (bits - 1) - 1


def test_rejects_truncated_foreign_and_corrupt_files():
    data = encode(_model(), 8)
    with pytest.raises(ArtifactError, match="truncated"):
        decode(data[:-10])
    with pytest.raises(ArtifactError, match="too short"):
        decode(data[:6])
    with pytest.raises(ArtifactError, match="not a distopt artifact"):
        decode(b"PK\x03\x04" + data[4:])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    with pytest.raises(ArtifactError, match="CRC mismatch"):
        decode(bytes(flipped))
    newer = bytearray(data)
    newer[4] = 99
    with pytest.raises(ArtifactError, match="version 99 is not supported"):
        decode(bytes(newer))


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(1, 6), blocks=st.integers(1, 2), units=st.integers(1, 40),
       sparsity=st.floats(0.0, 0.99), bits=st.sampled_from([32, 16, 8, 4]),
       seed=st.integers(0, 2**16))
def test_property_round_trip(channels, blocks, units, sparsity, bits, seed):
    spec = ModelSpec("cnn", (1, 12, 12), 3, tuple(channels * 2 ** i for i in range(blocks)),
                     (units,), 3)
    m = _model(seed, spec)
    apply_masks(m, global_magnitude_masks(m, sparsity))
    data = encode(m, bits)
    dec = decode(data)
    ref = _dequantized_reference(m, bits)
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(dec.model(x), ref(x), rtol=1e-4, atol=1e-5)
    # Pruned weights stay exactly zero after decoding.
    for (n, p), (_, q) in zip(m.named_parameters(), dec.model.named_parameters()):
        assert torch.equal(p == 0, q == 0) or bits < 32 and bool(((p == 0) <= (q == 0)).all())
