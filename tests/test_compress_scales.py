"""One weight scale per tensor (``compress.quantize.scales: tensor``, the ``int_tensor`` coding
of format v3): what quantization-aware training rounds to is what the file stores, the file
keeps one scale a tensor, flash counts one, and a training run writes it."""

from __future__ import annotations

import pytest
import torch

from distopt import metrics as M
from distopt.compress import decode, device_report, encode
from distopt.compress.coding import IntCodes
from distopt.compress.pruning import apply_masks, global_magnitude_masks
from distopt.compress.quantization import QuantizedWeights, WeightQuantization, quantize_codes
from distopt.compress.wrapper import ArtifactError
from distopt.config import QuantizeConfig, load_config
from distopt.models import ModelSpec, build_model, layer_kinds, prunable_weights
from distopt.training import WorkerEnv, fit

from conftest import TINY
from test_compress_methods import _v3_build, _v3_parts

SPEC = ModelSpec("cnn", (1, 16, 16), 10, (4, 4, 4), (16, 8), 3, block="bitnet", bias=False)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    apply_masks(model, global_magnitude_masks(model, 0.3))
    return model


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_one_scale_is_the_whole_tensors_max_or_ternary_mean_magnitude(bits):
    w = torch.randn(6, 5) * torch.arange(1, 7).float()[:, None]  # rows of different ranges
    q, scale = quantize_codes(w, bits, per_tensor=True)
    assert scale.shape == (1,)
    want = w.abs().max() / (2 ** (bits - 1) - 1) if bits > 2 else w.abs().mean()
    assert abs(float(scale) - float(want)) <= float(want) * 2 ** -10  # float16, rounded up
    assert torch.equal(q, torch.clamp(torch.round(w / scale), -(2 ** (bits - 1) - 1),
                                      2 ** (bits - 1) - 1).int())
    _, per_row = quantize_codes(w, bits)
    assert len(set(per_row.tolist())) == 6  # per channel: six scales, for contrast


@pytest.mark.parametrize("bits", [4, 2])
def test_the_file_stores_what_qat_trained_with_and_one_scale_a_tensor(bits):
    model = _model()
    codings = {n: IntCodes(bits, True) for n in layer_kinds(model)}
    data = encode(model, bits, codings=codings)
    decoded = decode(data)
    with QuantizedWeights.coded(model, bits, codings):
        trained_on = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, p in decoded.model.named_parameters():
        assert torch.equal(p, trained_on[name]), name
    weights = [e for e in decoded.tensors if "index" in e]
    assert all(e["coding"] == "int_tensor" and e["scales"] == "tensor" for e in weights)
    for _, scale in decoded.codes.values():  # every row takes the tensor's one scale
        assert len(set(scale.tolist())) == 1
    # The file holds one float16 scale a tensor, not one a channel.
    per_channel = encode(model, bits, codings={n: IntCodes(bits) for n in codings})
    header, raws, _ = _v3_parts(data)
    assert all(entry[0] == 3 for entry in header["t"])  # the int_tensor coding's id
    channels = sum(int(w.shape[0]) for _, w, _ in prunable_weights(model))
    assert len(raws[2]) == 2 * len(weights)
    assert decode(per_channel).tensors[0].get("scales") is None
    assert len(per_channel) > len(data) - 2 * channels  # scales were the difference (at most)
    # Flash: one float32 scale per tensor.
    assert device_report(decode(per_channel))[M.FLASH_BYTES] - \
        device_report(decoded)[M.FLASH_BYTES] == 4 * (channels - len(weights))


def test_a_per_tensor_entry_at_32_bits_is_refused_as_a_crafted_file():
    model = _model()
    data = encode(model, 4, codings={n: IntCodes(4, True) for n in layer_kinds(model)})
    header, raws, flag = _v3_parts(data)
    header["t"][0][1:3] = [32, 0]  # 32 bits, no scale bits: valid for the per-row coding
    with pytest.raises(ArtifactError, match="per-tensor scale needs integer codes"):
        decode(_v3_build(header, raws, flag))


def test_weight_quantization_claims_per_tensor_codes_below_32_bits_only():
    model = _model()
    codings: dict = {}
    WeightQuantization(QuantizeConfig(bits=4, bits_classifier=32, scales="tensor")) \
        .claim_codings(model, codings)
    kinds = layer_kinds(model)
    for name, coding in codings.items():
        assert coding == (IntCodes(32) if kinds[name] == "classifier" else IntCodes(4, True))


def test_a_run_with_per_tensor_scales_writes_and_reports_them(splits):
    cfg = load_config(None, TINY + ["compress.prune.ratio=0", "compress.quantize.qat=true",
                                    "compress.quantize.bits=4", "compress.quantize.scales=tensor",
                                    "compress.quantize.activation_bits=8", "model.bias=false"])
    out = fit(cfg, WorkerEnv(), lambda m, s, f=None: None, splits=splits)
    decoded = decode(out["artifact"])
    weights = [e for e in decoded.tensors if "index" in e]
    assert weights and all(e["scales"] == "tensor" for e in weights)
    # An integer model: 5 bytes (int32 multiplier, int8 shift) a tensor beside its codes.
    report = device_report(decoded)
    assert report[M.FLASH_BYTES] == report[M.WEIGHT_FLASH_BYTES] + 5 * len(weights)
    assert out["metrics"][M.FLASH_BYTES] == report[M.FLASH_BYTES]


# ---- odd levels (compress.quantize.odd_levels: BitNetMCU's 2bitsym and 4bitsym) -----------


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_odd_levels_are_2_to_the_bits_levels_without_zero_each_weight_at_its_nearest(bits):
    torch.manual_seed(1)
    w = torch.randn(8, 40)
    q, scale = quantize_codes(w, bits, odd=True)
    top = 2 ** bits - 1
    assert set(q.unique().tolist()) == set(range(-top, top + 1, 2))  # all 2**bits, no zero
    levels = torch.arange(-top, top + 1, 2).float()
    for row in range(8):  # the nearest level (ties aside), none clipped
        err = (w[row, :, None] - levels * scale[row]).abs()
        assert torch.equal(levels[err.argmin(1)].int(), q[row])
    if bits == 2:  # BitNetMCU's 2bitsym: +-0.5 and +-1.5 mean magnitudes
        mean = w.abs().mean(1)
        assert torch.allclose(scale, mean / 2, rtol=2 ** -10)
    else:
        assert torch.allclose(scale * top, w.abs().amax(1), rtol=2 ** -10)


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("bits", [2, 4])
def test_odd_levels_are_stored_in_bits_a_weight_as_qat_trained_them(bits, per_tensor):
    model = build_model(SPEC).eval()
    codings = {n: IntCodes(bits, per_tensor, odd=True) for n in layer_kinds(model)}
    decoded = decode(encode(model, bits, codings=codings))
    with QuantizedWeights.coded(model, bits, codings):
        trained_on = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, p in decoded.model.named_parameters():
        assert torch.equal(p, trained_on[name]), name
    for entry in decoded.tensors:
        assert entry["coding"] == "int_odd" and entry["levels"] == "odd"
        assert entry.get("scales") == ("tensor" if per_tensor else None)
    for q, _ in decoded.codes.values():
        assert (q % 2 == 1).all() and abs(q).max() <= 2 ** bits - 1
    flash = device_report(decoded)
    weights = sum(w.numel() for _, w, _ in prunable_weights(model))
    assert flash[M.WEIGHT_FLASH_BYTES] == sum(-(-w.numel() * bits // 8)
                                              for _, w, _ in prunable_weights(model))
    assert flash[M.WEIGHT_FLASH_BYTES] < weights * bits / 8 + len(codings)


def test_a_crafted_odd_level_entry_is_refused_naming_it():
    model = build_model(SPEC).eval()
    data = encode(model, 2, codings={n: IntCodes(2, odd=True) for n in layer_kinds(model)})
    header, raws, flag = _v3_parts(data)
    header["t"][0][1] = 8  # odd levels stop at 4 bits
    with pytest.raises(ArtifactError, match="odd-level entry"):
        decode(_v3_build(header, raws, flag))


def test_odd_levels_refuse_weight_pruning_whose_zeros_they_cannot_hold():
    from distopt.config import ConfigError

    with pytest.raises(ConfigError, match="compress.quantize.odd_levels: got true with "
                                          "prune.ratio 0.5"):
        load_config(None, ["compress.quantize.odd_levels=true", "compress.prune.ratio=0.5"])
    load_config(None, ["compress.quantize.odd_levels=true", "compress.prune.ratio=0.5",
                       "compress.prune.kind=structured"])
    q = load_config(None, ["compress.quantize.odd_levels=true", "compress.prune.ratio=0",
                           "compress.quantize.bits=2", "compress.quantize.bits_classifier=8"])
    codings: dict = {}
    WeightQuantization(q.compress.quantize).claim_codings(build_model(SPEC), codings)
    assert {c.odd for c in codings.values() if c.bits == 2} == {True}
    assert {c.odd for c in codings.values() if c.bits == 8} == {False}  # 8 bits keep zero
