"""The C export (distopt.c_source, distopt.c_parity): every family and weight coding it takes,
compiled by this machine's C compiler and run; its logits are the decoded PyTorch model's,
and the flash and RAM it compiles to are exactly the flash_bytes and peak_ram_bytes distopt
reports for the file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from distopt import metrics as M
from distopt.c_parity import c_compiler, c_parity
from distopt.c_source import CExportError, c_source
from distopt.compress import decode, device_report, encode
from distopt.compress.clustering import WeightClustering
from distopt.compress.coding import Codebook, IntCodes
from distopt.compress.pruning import apply_masks, global_magnitude_masks
from distopt.models import ModelSpec, build_model, layer_kinds, prunable_weights, seed_rnn
from distopt.runtime import InputNorm

from conftest import ROOT
from test_compress_integer import integer_file

META = {"input": InputNorm(1 / 255, 0.13, 0.31).to_meta()}


@pytest.fixture(scope="module", autouse=True)
def compiler() -> None:
    if c_compiler() is None:
        if os.environ.get("CI", "").lower() == "true":  # CI installs one: missing is a failure
            pytest.fail("CI=true but no C compiler (cc, gcc, clang) is on the PATH")
        pytest.skip("no C compiler (cc, gcc or clang) on the PATH")


def _check(model: torch.nn.Module, bits: int, codings: dict | None = None) -> dict:
    decoded = decode(encode(model, bits, META, codings=codings))
    spec = model.spec
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(40, *spec.in_shape)).astype(np.float32)
    got = c_parity(decoded, c_source(decoded, "t.dopt").encode(), x,
                   rng.randint(0, spec.num_classes, 40))
    device = device_report(decoded)
    assert got[M.FLASH_BYTES] == device[M.FLASH_BYTES]
    assert got["arena_bytes"] == device[M.PEAK_RAM_BYTES]
    assert got["agreement"] == 1.0 and got["max_abs_logit_diff"] < 1e-4, got
    assert got["test_accuracy_c"] == got["test_accuracy_pytorch"]
    return got


@pytest.mark.parametrize("spec,bits", [
    (ModelSpec("cnn", (1, 28, 28), 10, (4, 8), (16,), 3), 8),
    (ModelSpec("cnn", (1, 28, 28), 10, (4, 8), (16,), 3, block="separable", head="gap"), 4),
    (ModelSpec("cnn", (3, 12, 12), 5, (4,), (), 5, block="same"), 3),
    (ModelSpec("cnn", (1, 16, 16), 10, (4, 4), (8,), 3, block="depthwise", head="gap"), 4),
    (ModelSpec("cnn", (1, 16, 16), 10, (4, 4, 4), (8,), 3, block="bitnet", bias=False), 4),
    (ModelSpec("conv1d", (3, 1, 64), 6, (4, 8), (8,), 5, block="same"), 2),
    (ModelSpec("mlp", (1, 8, 8), 4, (), (16, 8), 3), 16),
    (ModelSpec("mlp", (1, 8, 8), 4, (), (16,), 3), 32),
    (ModelSpec("mlp", (1, 8, 8), 4, (), (16,), 3, bias=False), 4),
])
def test_each_family_and_bit_width_runs_in_c_as_in_pytorch(spec, bits):
    torch.manual_seed(0)
    _check(build_model(spec), bits)


def test_pruned_and_clustered_weights_run_in_c_as_in_pytorch():
    """Codebooks with the pruned weights' zero beside them (the file keeps those in its sparse
    index; a dense kernel indexes a zero too), and pruned integer codes."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", (1, 16, 16), 10, (4, 8), (16,), 3))
    apply_masks(model, global_magnitude_masks(model, 0.7))
    _check(model, 4)
    WeightClustering(6).preview(model)
    names = [n for n, _, _ in prunable_weights(model)]
    got = _check(model, 4, {n: Codebook(7) for n in names})
    assert got[M.FLASH_BYTES] > 0


def test_what_c_export_does_not_take_is_refused_saying_so():
    rnn = build_model(seed_rnn())
    with pytest.raises(CExportError, match="family 'rnn'; C export takes the cnn, conv1d and "
                                           "mlp families"):
        c_source(decode(encode(rnn, 8, META)), "r.dopt")
    resized = {"input": InputNorm(1 / 255, 0.1, 0.3, size=(16, 16)).to_meta()}
    cnn = build_model(ModelSpec("cnn", (1, 16, 16), 10, (4,), (), 3))
    with pytest.raises(CExportError, match="resized"):
        c_source(decode(encode(cnn, 8, resized)), "c.dopt")


def test_distopt_export_writes_a_dopt_file_as_c_beside_it(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", (1, 28, 28), 10, (4, 8), (16,), 3))
    path = tmp_path / "m.dopt"
    path.write_bytes(encode(model, 4, META))
    p = subprocess.run([sys.executable, "-m", "distopt", "export", str(path), "--format", "c"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "m.c").read_text()
    assert "void distopt_predict(const float *raw, float *logits)" in text
    assert "static float a[" in text and "#include <stdint.h>" in text


# ---- integer models (8-bit activations): int8 in, int8 logits out, bit-exact ---------------

INTEGER_SPECS = [
    ModelSpec("cnn", (1, 28, 28), 10, (4, 8), (16,), 3),
    ModelSpec("cnn", (1, 16, 16), 10, (4, 8), (16,), 3, block="same"),
    ModelSpec("cnn", (1, 16, 16), 10, (4, 8), (16,), 3, block="separable", head="gap"),
    ModelSpec("cnn", (1, 16, 16), 10, (4, 4, 4), (16,), 3, block="depthwise"),
    ModelSpec("cnn", (1, 16, 16), 10, (4, 4), (16, 8), 3, block="depthwise", bias=False),
    ModelSpec("cnn", (1, 16, 16), 10, (4, 4, 4), (16, 8), 3, block="bitnet", bias=False),
    ModelSpec("conv1d", (3, 1, 64), 6, (4, 8), (8,), 5, block="same"),
    ModelSpec("mlp", (1, 8, 8), 4, (), (16, 8), 3),
]


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("spec", INTEGER_SPECS,
                         ids=lambda s: f"{s.family}-{s.block}-{s.head}" + ("" if s.bias else
                                                                            "-nobias"))
def test_integer_models_run_in_c_bit_exact_with_the_integer_reference(spec, bits):
    """Every integer family at every integer weight width: the C program's int8 logits are
    the integer reference's, bit for bit, and it compiles to exactly the integer model's
    flash_bytes (codes, int32 multipliers, int8 shifts, int32 biases) and int8 arena."""
    torch.manual_seed(0)
    model = build_model(spec)
    apply_masks(model, global_magnitude_masks(model, 0.3))
    decoded = decode(integer_file(model, bits))
    text = c_source(decoded, "i.dopt")
    assert "float" not in text and "math.h" not in text  # integer-only: no float, no libm
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(300, *spec.in_shape)).astype(np.float32)
    got = c_parity(decoded, text.encode(), x, rng.randint(0, spec.num_classes, 300))
    device = device_report(decoded)
    assert got[M.FLASH_BYTES] == device[M.FLASH_BYTES]
    assert got["arena_bytes"] == device[M.PEAK_RAM_BYTES]
    assert got["agreement"] == 1.0 and got["max_abs_logit_diff"] == 0.0, got


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("spec", [INTEGER_SPECS[0], INTEGER_SPECS[5], INTEGER_SPECS[-1]],
                         ids=lambda s: f"{s.family}-{s.block}")
def test_per_tensor_scales_keep_one_multiplier_a_layer_in_c_bit_exact(spec, bits):
    """compress.quantize.scales tensor: the C program keeps one int32 multiplier and one int8
    shift a layer (what flash_bytes counts: 5 B a layer, not 5 B a channel), and its logits
    are still the integer reference's, bit for bit."""
    torch.manual_seed(0)
    model = build_model(spec)
    decoded = decode(integer_file(model, bits, per_tensor=True))
    per_channel = decode(integer_file(model, bits))
    text = c_source(decoded, "i.dopt")
    rng = np.random.RandomState(1)
    x = rng.randint(0, 256, size=(300, *spec.in_shape)).astype(np.float32)
    got = c_parity(decoded, text.encode(), x, rng.randint(0, spec.num_classes, 300))
    device, before = device_report(decoded), device_report(per_channel)
    assert got[M.FLASH_BYTES] == device[M.FLASH_BYTES]
    assert got["agreement"] == 1.0 and got["max_abs_logit_diff"] == 0.0, got
    channels = sum(int(e["shape"][0]) for e in decoded.tensors if "index" in e)
    layers = sum(1 for e in decoded.tensors if "index" in e)
    assert before[M.FLASH_BYTES] - device[M.FLASH_BYTES] == 5 * (channels - layers)


def test_per_tensor_scales_run_in_float_c_as_in_pytorch():
    """A weight-only model with one scale per tensor: one float32 scale a layer in C."""
    spec = ModelSpec("cnn", (1, 16, 16), 10, (4, 4, 4), (8,), 3, block="bitnet", bias=False)
    torch.manual_seed(0)
    model = build_model(spec)
    codings = {n: IntCodes(4, True) for n in layer_kinds(model)}
    got = _check(model, 4, codings)
    per_channel = device_report(decode(encode(model, 4, META)))
    layers = len(codings)
    channels = sum(int(w.shape[0]) for _, w, _ in prunable_weights(model))
    assert per_channel[M.FLASH_BYTES] - got[M.FLASH_BYTES] == 4 * (channels - layers)


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("spec", [INTEGER_SPECS[0], INTEGER_SPECS[5], INTEGER_SPECS[-1]],
                         ids=lambda s: f"{s.family}-{s.block}")
def test_odd_levels_run_in_c_bit_exact_at_their_bits(spec, bits, per_tensor):
    """compress.quantize.odd_levels: the odd code 2k + 1 is packed as k in ``bits`` bits (2 bits
    for BitNetMCU's {-3, -1, 1, 3}); integer C is the integer reference bit for bit and float C
    the decoded model, each compiled to exactly its flash_bytes."""
    torch.manual_seed(0)
    model = build_model(spec)
    decoded = decode(integer_file(model, bits, per_tensor=per_tensor, odd=True))
    assert {e["levels"] for e in decoded.tensors if "index" in e} == {"odd"}
    rng = np.random.RandomState(3)
    x = rng.randint(0, 256, size=(300, *spec.in_shape)).astype(np.float32)
    got = c_parity(decoded, c_source(decoded, "i.dopt").encode(), x,
                   rng.randint(0, spec.num_classes, 300))
    assert got[M.FLASH_BYTES] == device_report(decoded)[M.FLASH_BYTES]
    assert got["agreement"] == 1.0 and got["max_abs_logit_diff"] == 0.0, got
    codings = {n: IntCodes(bits, per_tensor, True) for n in layer_kinds(model)}
    _check(model, bits, codings)  # weight-only: float C
