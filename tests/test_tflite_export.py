"""TensorFlow Lite export of integer models (distopt.tflite_source, distopt.tflite_parity): the
flatbuffer run on TensorFlow Lite Micro's own interpreter gives the integer reference's int8
logits bit for bit, on every integer family at 8-, 4-, 3- and 2-bit weights; its arena's
activation part is exactly peak_ram_bytes; float models and a missing package are refused
saying so."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from distopt import metrics as M
from distopt.cli import main
from distopt.compress import decode, device_report, encode
from distopt.compress.pruning import apply_masks, global_magnitude_masks
from distopt.export import ExportError
from distopt.models import build_model
from distopt.tflite_source import tflite_bytes

from test_c_export import INTEGER_SPECS
from test_compress_integer import META, integer_file

HAVE_TFLM = importlib.util.find_spec("tflite_micro") is not None
needs_tflm = pytest.mark.skipif(
    not HAVE_TFLM and os.environ.get("CI", "").lower() != "true",
    reason="tflite-micro not installed (pip install 'distopt[tflite]'; CI installs it)")


@needs_tflm
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("spec", INTEGER_SPECS,
                         ids=lambda s: f"{s.family}-{s.block}-{s.head}" + ("" if s.bias else
                                                                            "-nobias"))
def test_tflite_micro_computes_the_integer_reference_bit_for_bit(spec, bits):
    from distopt.tflite_parity import tflm_parity

    torch.manual_seed(0)
    model = build_model(spec)
    apply_masks(model, global_magnitude_masks(model, 0.3))
    decoded = decode(integer_file(model, bits))
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(200, *spec.in_shape)).astype(np.float32)
    got = tflm_parity(decoded, tflite_bytes(decoded, "i.dopt"), x,
                      rng.randint(0, spec.num_classes, 200))
    assert got["agreement"] == 1.0 and got["max_abs_logit_diff"] == 0.0, got
    assert got["samples"] == 200
    # TFLM's planner puts the activation buffers in the arena's head: the same peak distopt
    # counts, give or take its 16-byte alignment of each buffer.
    peak = device_report(decoded)[M.PEAK_RAM_BYTES]
    assert peak <= got["tflm_arena_bytes"] <= peak + 32, (peak, got)
    assert got["tflm_arena_total_bytes"] > got["tflm_arena_bytes"]


@needs_tflm
@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("spec", [INTEGER_SPECS[0], INTEGER_SPECS[5], INTEGER_SPECS[-1]],
                         ids=lambda s: f"{s.family}-{s.block}")
@pytest.mark.parametrize("odd", [False, True])
def test_tflite_micro_computes_per_tensor_scaled_models_bit_for_bit(spec, bits, odd):
    """compress.quantize.scales tensor: the flatbuffer states each layer's one scale per
    channel (TFLite's per-channel quantization, all equal), and the interpreter's int8 logits
    are still the integer reference's; with odd levels too (their odd codes as int8)."""
    from distopt.tflite_parity import tflm_parity

    torch.manual_seed(0)
    decoded = decode(integer_file(build_model(spec), bits, per_tensor=True, odd=odd))
    rng = np.random.RandomState(2)
    x = rng.randint(0, 256, size=(200, *spec.in_shape)).astype(np.float32)
    got = tflm_parity(decoded, tflite_bytes(decoded, "i.dopt"), x,
                      rng.randint(0, spec.num_classes, 200))
    assert got["agreement"] == 1.0 and got["max_abs_logit_diff"] == 0.0, got


def test_float_models_are_refused_and_a_missing_package_is_named(tmp_path, monkeypatch,
                                                                capsys):
    torch.manual_seed(0)
    model = build_model(INTEGER_SPECS[-1])
    with pytest.raises(ExportError, match="takes integer models"):
        tflite_bytes(decode(encode(model, 8, META)), "f.dopt")
    path = tmp_path / "i.dopt"
    path.write_bytes(integer_file(model, 8))
    for name in [n for n in sys.modules if n.startswith("tflite_micro")] + ["tflite_micro"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    assert main(["export", str(path), "--format", "tflite"]) == 2
    assert "pip install 'distopt[tflite]'" in capsys.readouterr().err
    assert not (tmp_path / "i.tflite").exists()


@needs_tflm
def test_distopt_export_writes_a_dopt_file_as_tflite_beside_it(tmp_path):
    from tflite_micro.python.tflite_micro import runtime

    torch.manual_seed(0)
    path = tmp_path / "i.dopt"
    path.write_bytes(integer_file(build_model(INTEGER_SPECS[0]), 4))
    assert main(["export", str(path), "--format", "tflite"]) == 0
    data = (tmp_path / "i.tflite").read_bytes()
    assert data[4:8] == b"TFL3"
    details = runtime.Interpreter.from_bytes(data).get_input_details(0)
    assert details["dtype"] == np.int8 and list(details["shape"]) == [1, 28, 28, 1]


@needs_tflm
def test_a_front_mixing_integer_and_float_models_exports_those_the_format_takes(tmp_path):
    """activation_bits searched: TFLite writes the integer model and records the float one as
    refused with the reason (the table says so); asking for the float one alone is an error."""
    import json

    from distopt.exporters import EXPORTERS, export_front, headers, table

    torch.manual_seed(0)
    model = build_model(INTEGER_SPECS[-1])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "i.dopt").write_bytes(integer_file(model, 4))
    (tmp_path / "models" / "f.dopt").write_bytes(encode(model, 4, META))
    metrics = {M.NONZERO_PARAMS: 1, M.PARAMS: 2, M.SIZE_BYTES: 3}
    entries = [{"trial_id": t, "file": f"models/{t}.dopt", "metrics": metrics,
                "config": {"compress": {"quantize": {"bits": 4, "activation_bits": a}}}}
               for t, a in (("i", 8), ("f", None))]
    (tmp_path / M.MANIFEST_FILE).write_text(json.dumps({"models": entries}))
    tfl = EXPORTERS["tflite"]
    got = {e["trial_id"]: e["tflite"] for e in export_front(tmp_path, tfl, verify=False)}
    assert got["i"]["file"] == "tflite/i.tflite" and (tmp_path / "tflite" / "i.tflite").exists()
    assert "takes integer models" in got["f"]["refused"]
    assert not (tmp_path / "tflite" / "f.tflite").exists()
    rows = table(export_front(tmp_path, tfl, verify=False), tfl, False)
    assert rows[1][4].startswith("not exported: TensorFlow Lite export takes integer models")
    assert len(rows[1]) == len(headers(tfl, False))
    with pytest.raises(ExportError, match="takes integer models"):
        export_front(tmp_path, tfl, trial="f", verify=False)
