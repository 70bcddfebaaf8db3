"""Integer-only models (distopt.compress.fixed_point, .integer, .activations): the fixed-point
arithmetic against an independent big-integer implementation, where a model's activations are
quantized, the integer reference against the float model it approximates, the file's grids
checked on decode, and what an integer model costs a device."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from distopt import metrics as M
from distopt.compress import ArtifactError, decode, device_report, encode
from distopt.compress.activations import ActivationGrids, ActivationQuantization
from distopt.compress.coding import IntCodes
from distopt.compress.fixed_point import (affine_params, avg_divide, quantize_multiplier,
                                          requantize)
from distopt.compress.integer import META_KEY, QParams, quant_points
from distopt.compress.pruning import apply_masks, global_magnitude_masks
from distopt.config import QuantizeConfig
from distopt.models import ModelSpec, build_model, layer_kinds, seed_rnn
from distopt.models.cost import trace
from distopt.runtime import InputNorm

META = {"input": InputNorm(1 / 255, 0.13, 0.31).to_meta()}
NORM = InputNorm(1 / 255, 0.13, 0.31)


def raw_inputs(spec: ModelSpec, n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, *spec.in_shape)).astype(
        np.float32)


def integer_file(model: nn.Module, bits: int, x: torch.Tensor | None = None,
                 per_tensor: bool = False, odd: bool = False) -> bytes:
    """``model`` as an integer model's file: grids calibrated on ``x`` (normalized inputs);
    ``per_tensor``: one weight scale per tensor; ``odd``: levels without a zero."""
    spec = model.spec
    x = NORM(torch.from_numpy(raw_inputs(spec, 64, 1))) if x is None else x
    method = ActivationQuantization(QuantizeConfig(bits=bits, activation_bits=8))
    codings = {n: IntCodes(bits, per_tensor, odd) for n in layer_kinds(model)}
    method.calibrate(model, x, codings)
    return encode(model, bits, {**META, **method.meta()}, codings=codings)


# ---- fixed point --------------------------------------------------------------------------


def _gemmlowp(acc: int, mult: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier in Python's unbounded integers, step by step."""
    left, right = max(shift, 0), max(-shift, 0)
    x = max(min(acc * (1 << left), 2 ** 31 - 1), -2 ** 31)
    ab = x * mult
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    high = int((ab + nudge) / (1 << 31)) if abs(ab + nudge) < 2 ** 52 else \
        (abs(ab + nudge) // (1 << 31)) * (1 if ab + nudge >= 0 else -1)
    mask = (1 << right) - 1
    remainder, threshold = high & mask, (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


def test_requantize_is_gemmlowps_rounding_bit_for_bit():
    rng = np.random.default_rng(0)
    reals = [1e-6, 0.000123, 0.0471, 0.25, 0.5, 0.7877, 0.99999, 1.5, 3.0]
    accs = np.concatenate([rng.integers(-2 ** 24, 2 ** 24, 300),
                           [0, 1, -1, 2 ** 31 - 1, -2 ** 31, 1 << 20, -(1 << 20), 3, -3]])
    for real in reals:
        mult, shift = quantize_multiplier(real)
        assert 2 ** 30 <= mult < 2 ** 31 and abs(mult * 2.0 ** (shift - 31) - real) <= \
            real * 2 ** -30
        got = requantize(torch.from_numpy(accs), torch.tensor(mult), torch.tensor(shift))
        want = [_gemmlowp(int(a), mult, shift) for a in accs]
        assert got.tolist() == want, real
        # ... which is acc * real rounded, give or take the double rounding's one step.
        small = np.abs(accs * real) < 2 ** 30
        assert np.abs(got.numpy()[small] - np.round(accs[small] * real)).max() <= 1


def test_affine_grids_hold_zero_exactly_and_cover_their_range():
    for lo, hi in [(-0.4242, 2.8215), (0.0, 5.0), (-3.0, -1.0), (0.5, 0.7), (-1e-3, 1e3)]:
        scale, zp = affine_params(lo, hi)
        assert -128 <= zp <= 127 and scale > 0
        assert scale * (-128 - zp) <= min(lo, 0) + scale and scale * (127 - zp) >= \
            max(hi, 0) - scale
    assert affine_params(0.0, 5.0)[1] == -128  # ReLU outputs use the whole int8 range
    assert affine_params(0.0, 0.0) == (1.0, 0)


def test_average_pool_rounds_half_away_from_zero():
    sums = torch.tensor([5, -5, 6, -6, 7, -7, 0])
    assert avg_divide(sums, 4).tolist() == [1, -1, 2, -2, 2, -2, 0]


# ---- points -------------------------------------------------------------------------------


def test_points_are_the_input_and_each_layers_output_after_its_relu():
    sep = build_model(ModelSpec("cnn", (1, 16, 16), 10, (4, 8), (16,), 3, block="separable",
                                head="gap"))
    points, pools = quant_points(trace(sep, sep.spec))
    feats, head = sep.features, sep.classifier
    # conv0 -> ReLU; the depthwise conv (no ReLU after it) is its own point; pointwise -> ReLU;
    # hidden dense -> ReLU; the classifier's logits.
    assert [p.module for p in points] == [feats[1], feats[3], feats[5], head[3], head[5]]
    assert [p.relu for p in points] == [True, False, True, True, False]
    assert list(pools.values()) == [3]  # the global average keeps the pointwise conv's grid
    mlp = build_model(ModelSpec("mlp", (1, 8, 8), 4, (), (16, 8), 3))
    assert len(quant_points(trace(mlp, mlp.spec))[0]) == 3
    rnn = build_model(seed_rnn())
    with pytest.raises(ValueError, match="has no integer kernel"):
        quant_points(trace(rnn, rnn.spec))


# ---- the integer reference ----------------------------------------------------------------


@pytest.mark.parametrize("spec,bits", [
    (ModelSpec("cnn", (1, 28, 28), 10, (8, 16), (32,), 3), 8),
    (ModelSpec("cnn", (1, 16, 16), 10, (4, 8), (16,), 3, block="separable", head="gap"), 4),
    (ModelSpec("conv1d", (3, 1, 64), 6, (4, 8), (8,), 5, block="same"), 8),
    (ModelSpec("mlp", (1, 8, 8), 4, (), (16, 8), 3), 8),
])
def test_integer_reference_tracks_the_fake_quantized_float_model(spec, bits):
    """The integer reference computes, within a few int8 steps, what the model trained with
    fake quantization computes: its bias rounding and fixed-point multipliers are the only
    differences."""
    torch.manual_seed(0)
    model = build_model(spec).eval()
    decoded = decode(integer_file(model, bits))
    assert decoded.integer is not None and decoded.reference is decoded.integer
    grids = [tuple(v) for v in zip(decoded.meta[META_KEY]["scale"],
                                   decoded.meta[META_KEY]["zero_point"])]
    x = NORM(torch.from_numpy(raw_inputs(spec, 200, 2)))
    with torch.no_grad():
        got = decoded.reference(x)
        fq = decoded.model.eval()
        with ActivationGrids(fq, [QParams(s, z) for s, z in grids]):
            want = fq(x)
    step = grids[-1][0]
    assert (got - want).abs().max() <= 4 * step + 1e-6
    agree = (got.argmax(1) == want.argmax(1)).float().mean()
    assert agree >= 0.95, agree


def test_a_pruned_integer_model_keeps_its_zeros_and_reports_int8_ram_and_integer_flash():
    torch.manual_seed(0)
    spec = ModelSpec("cnn", (1, 16, 16), 10, (4, 8), (16,), 3)
    model = build_model(spec)
    apply_masks(model, global_magnitude_masks(model, 0.6))
    decoded = decode(integer_file(model, 4))
    float_file = decode(encode(model, 4, META))
    dev, fdev = device_report(decoded), device_report(float_file)
    # Activations: int8, a quarter of float32's buffers; MACs the same.
    assert dev[M.PEAK_RAM_BYTES] * 4 == fdev[M.PEAK_RAM_BYTES]
    assert dev[M.MACS] == fdev[M.MACS] and dev[M.NONZERO_MACS] == fdev[M.NONZERO_MACS]
    # Flash: the same codes; per output channel an int32 multiplier + int8 shift (5 bytes)
    # instead of a float32 scale; biases int32 (4 bytes, as float32).
    channels = 4 + 8 + 16 + 10
    assert dev[M.WEIGHT_FLASH_BYTES] == fdev[M.WEIGHT_FLASH_BYTES]
    assert dev[M.FLASH_BYTES] == fdev[M.FLASH_BYTES] + channels


def test_a_files_grids_are_checked_on_decode():
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (1, 8, 8), 4, (), (16,), 3))
    good = decode(integer_file(model, 8)).meta[META_KEY]
    for bad, says in [({**good, "scale": good["scale"][:-1]}, "must list 3 scales"),
                      ({**good, "zero_point": [0, 0, 200]}, "zero points integers"),
                      ({**good, "scale": [1.0, 0.0, 1.0]}, "scales are finite and > 0"),
                      ({**good, "bits": 4}, "must hold bits 8")]:
        with pytest.raises(ArtifactError, match=says):
            decode(encode(model, 8, {**META, META_KEY: bad}), "bad.dopt")
    with pytest.raises(ArtifactError, match="integer codes of 8 bits or fewer"):
        decode(encode(model, 16, {**META, META_KEY: good}), "wide.dopt")
    # A file without grids is a float model, as before.
    assert decode(encode(model, 8, META)).integer is None


def test_calibration_sees_the_weights_as_stored_and_leaves_them_as_they_were():
    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", (1, 16, 16), 10, (4,), (8,), 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = ActivationQuantization(QuantizeConfig(bits=2, activation_bits=8))
    method.calibrate(model, NORM(torch.from_numpy(raw_inputs(model.spec, 32))),
                     {n: IntCodes(2) for n in layer_kinds(model)})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    grids = method.grids
    assert grids is not None and len(grids) == 4
    # The input's grid for 8-bit pixels normalized with scale 1/255: one step per pixel value.
    assert math.isclose(grids[0].scale, (1 / 255) / 0.31, rel_tol=1e-5)
    restored = ActivationQuantization(QuantizeConfig(bits=2, activation_bits=8))
    restored.restore(method.checkpoint(), torch.device("cpu"))
    assert restored.grids == [dataclasses.replace(g) for g in grids]


def test_load_runs_the_integer_reference_and_onnx_export_refuses_an_integer_model(tmp_path):
    import distopt
    from distopt.export import ExportError, to_onnx

    torch.manual_seed(0)
    spec = ModelSpec("cnn", (1, 16, 16), 10, (4,), (8,), 3)
    data = integer_file(build_model(spec), 4)
    path = tmp_path / "i.dopt"
    path.write_bytes(data)
    x = raw_inputs(spec, 16, 3).astype(np.uint8)
    decoded = decode(data)
    with torch.no_grad():
        want = decoded.integer(NORM(torch.from_numpy(x)))
    assert torch.equal(distopt.load(path)(x), want)
    with pytest.raises(ExportError, match="integer model .* export it with --format c"):
        to_onnx(decoded, "i.dopt")
