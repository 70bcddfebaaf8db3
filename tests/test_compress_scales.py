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
