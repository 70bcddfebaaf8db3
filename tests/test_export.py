"""ONNX export: the graph computes what the decoded artifact computes, stores what the issue
asks (int8 codes with per-channel DequantizeLinear, zeros kept), and the CLI exports a front."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import distopt  # noqa: E402
from distopt.cli import main  # noqa: E402
from distopt.compress import decode, encode  # noqa: E402
from distopt.config import load_config  # noqa: E402
from distopt.data import generate_signals, load_mini, load_splits  # noqa: E402
from distopt.export import (INPUT_NAME, example_feed, measure_ort_latency_ms, parity,  # noqa: E402
                            session, to_onnx)
from distopt.compress.coding import IntCodes  # noqa: E402
from distopt.models import ModelSpec, build_model, layer_kinds, prunable_weights  # noqa: E402
from distopt.runtime import InputNorm  # noqa: E402
from distopt.training import WorkerEnv, fit  # noqa: E402

from conftest import TINY  # noqa: E402

NORM = {"scale": 1 / 255, "mean": 0.13, "std": 0.31, "tokens": False}
TOKENS = {"scale": 1.0, "mean": 0.0, "std": 1.0, "tokens": True}
SIGNALS = {"scale": 1.0, "mean": 0.1, "std": 1.2, "tokens": False}

IMG = (1, 28, 28)
SPECS = {
    "cnn-flatten": ModelSpec("cnn", IMG, 10, (6, 12), (16,), 3),
    "cnn-gap": ModelSpec("cnn", IMG, 10, (8, 16), (12,), 5, head="gap"),
    "cnn-same": ModelSpec("cnn", IMG, 10, (6, 12, 16), (16,), 3, block="same"),
    "cnn-separable": ModelSpec("cnn", IMG, 10, (6, 12, 16), (12,), 3, block="separable"),
    "cnn-depthwise": ModelSpec("cnn", IMG, 10, (6, 6, 6), (12,), 3, block="depthwise"),
    "cnn-bitnet": ModelSpec("cnn", IMG, 10, (6, 6, 6), (12,), 3, block="bitnet"),
    "conv1d": ModelSpec("conv1d", (3, 1, 64), 6, (8, 16), (12,), 5),
    "conv1d-separable": ModelSpec("conv1d", (3, 1, 64), 6, (8, 16), (12,), 5,
                                  block="separable"),
    "mlp": ModelSpec("mlp", IMG, 10, (), (32, 16), 3),
    "cnn-nobias": ModelSpec("cnn", IMG, 10, (6, 12), (16,), 3, bias=False),
    "rnn-rows": ModelSpec("rnn", IMG, 10, (), (), 3, cell="rnn", rnn_units=(16, 12)),
    "lstm-tokens": ModelSpec("rnn", (20,), 5, (), (8,), 3, cell="lstm", rnn_units=(12, 10),
                             vocab_size=50, embed_dim=6),
    "gru-tokens": ModelSpec("rnn", (20,), 5, (), (), 3, cell="gru", rnn_units=(12,),
                            vocab_size=50, embed_dim=6),
}


def _random_model(spec: ModelSpec, seed: int, sparsity: float):
    """A model with PyTorch's random init, every weight scaled up so that its predictions
    vary between inputs, and a random fraction of every weight zeroed, as pruning leaves it."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if spec.tokens:  # Keras' +-0.05 embedding init barely moves a random recurrent net
            model.embedding.weight.normal_(0.0, 1.0, generator=g)
        for _, w, _ in prunable_weights(model):
            w.mul_(2.0 * (torch.rand(w.shape, generator=g) >= sparsity))
    return model


def _raw_inputs(spec: ModelSpec, n: int, seed: int) -> np.ndarray:
    """Real inputs as stored: MNIST pixel values, generated signals, random token ids."""
    rng = np.random.default_rng(seed)
    if spec.tokens:
        return rng.integers(0, spec.vocab_size, (n, *spec.in_shape)).astype(np.int64)
    if spec.family == "conv1d":
        return generate_signals(n, seed, length=spec.in_shape[2])[0]
    x = load_mini()[2]
    return x[rng.choice(len(x), n, replace=False)].astype(np.float32)


def _norm(spec: ModelSpec) -> dict:
    return TOKENS if spec.tokens else SIGNALS if spec.family == "conv1d" else NORM


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 3, 2])
@pytest.mark.parametrize("name", list(SPECS))
def test_onnx_runtime_computes_what_the_decoded_artifact_computes(name, bits):
    spec = SPECS[name]
    model = _random_model(spec, seed=bits, sparsity=0.5)
    decoded = decode(encode(model, bits, {"input": _norm(spec)}))
    x = _raw_inputs(spec, 256, seed=1)
    norm = InputNorm.from_meta(decoded.meta["input"])
    with torch.no_grad():
        ref = decoded.model(norm(torch.from_numpy(x))).numpy()
    got = session(to_onnx(decoded)).run(None, {INPUT_NAME: x})[0]
    assert got.shape == ref.shape == (256, spec.num_classes)
    # A wrong gate order, transposed axis or missing normalization moves logits by O(1).
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999
    # The logits vary between inputs by far more than the tolerance, so the check has teeth.
    assert ref.std(axis=0).mean() > 30 * 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("name", ["cnn-flatten", "cnn-separable", "conv1d", "lstm-tokens"])
@pytest.mark.parametrize("odd", [False, True])
def test_per_tensor_scales_run_on_onnx_runtime_as_decoded(name, odd):
    """One scale per tensor (``IntCodes(per_tensor=True)``), and odd levels without a zero:
    the graph computes what the decoded model computes."""
    spec = SPECS[name]
    model = _random_model(spec, seed=5, sparsity=0.0 if odd else 0.5)
    codings = {n: IntCodes(4, True, odd) for n in layer_kinds(model)}
    decoded = decode(encode(model, 4, {"input": _norm(spec)}, codings=codings))
    assert all(e.get("scales") == "tensor" and (e.get("levels") == "odd") == odd
               for e in decoded.tensors if "index" in e)
    x = _raw_inputs(spec, 128, seed=1)
    norm = InputNorm.from_meta(decoded.meta["input"])
    with torch.no_grad():
        ref = decoded.model(norm(torch.from_numpy(x))).numpy()
    got = session(to_onnx(decoded)).run(None, {INPUT_NAME: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["cnn-flatten", "cnn-separable", "conv1d", "lstm-tokens",
                                  "gru-tokens"])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_low_bit_weights_are_int8_codes_behind_per_channel_dequantize(name, bits):
    spec = SPECS[name]
    model = _random_model(spec, seed=3, sparsity=0.6)
    decoded = decode(encode(model, bits, {"input": _norm(spec)}))
    proto = onnx.load_from_string(to_onnx(decoded))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == len(decoded.codes) == len(prunable_weights(decoded.model))
    qmax = 2 ** (bits - 1) - 1
    zeros_onnx = zeros_torch = 0
    for node in dq:
        codes, scale, zero = (inits[i] for i in node.input)
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert codes.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
        assert scale.dtype == np.float32 and scale.shape == (codes.shape[axis],)
        assert np.abs(codes).max() <= qmax
        zeros_onnx += int((codes == 0).sum())
    for _, w, _ in prunable_weights(decoded.model):
        zeros_torch += int((w == 0).sum())
    assert zeros_onnx == zeros_torch > 0  # pruned zeros stay zeros, nothing else becomes one
    # Only biases and normalization constants are float: no weight was dequantized at export.
    floats = sum(a.size for a in inits.values() if a.dtype == np.float32)
    biases = sum(p.numel() for n, p in decoded.model.named_parameters() if "bias" in n)
    scales = sum(inits[node.input[1]].size for node in dq)
    assert floats == biases + scales + (0 if spec.tokens else 3)


def test_onnx_keeps_the_artifact_meta_and_takes_a_dynamic_batch():
    spec = SPECS["cnn-flatten"]
    meta = {"input": NORM, "config_name": "x", "data_digest": "abc"}
    decoded = decode(encode(_random_model(spec, 0, 0.0), 8, meta))
    onnx_bytes = to_onnx(decoded)
    proto = onnx.load_from_string(onnx_bytes)
    assert proto.opset_import[0].version >= 13
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["distopt"]) == decoded.meta
    assert decoded.meta["data_digest"] == "abc" and \
        np.float32(decoded.meta["input"]["scale"]) == np.float32(NORM["scale"])
    sess = session(onnx_bytes)
    for n in (1, 7):
        assert sess.run(None, {INPUT_NAME: _raw_inputs(spec, n, 0)})[0].shape == (n, 10)
    assert measure_ort_latency_ms(onnx_bytes, example_feed(spec), runs=5) > 0


@pytest.mark.slow
def test_trained_model_on_onnx_runtime_matches_pytorch_on_the_embedded_test_set(tmp_path):
    """The issue's parity rule on a real model (pruned, 4-bit) over the whole test set."""
    cfg = load_config(None, TINY + ["compress.quantize.bits=4", "model.channels=8"])
    splits = load_splits(cfg.data)
    out = fit(cfg, WorkerEnv(), lambda *a, **k: None, splits=splits)
    decoded = decode(out["artifact"])
    result = parity(decoded, to_onnx(decoded), splits.x_test, splits.y_test)
    assert result["samples"] == len(splits.y_test) == 2000
    assert result["test_accuracy_pytorch"] > 0.5  # a model that learned: parity means something
    assert abs(result["test_accuracy_onnxruntime"] - result["test_accuracy_pytorch"]) <= 0.0005
    assert result["agreement"] >= 0.999
    # distopt.load reads both files and answers raw uint8 batches alike.
    (tmp_path / "m.dopt").write_bytes(out["artifact"])
    (tmp_path / "m.onnx").write_bytes(to_onnx(decoded))
    x = splits.x_test[:300]
    from_dopt, from_onnx = distopt.load(tmp_path / "m.dopt"), distopt.load(tmp_path / "m.onnx")
    with torch.no_grad():
        a, b = from_dopt(x), from_onnx(x)
    assert isinstance(b, torch.Tensor) and b.shape == a.shape == (300, 10)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert from_onnx.meta["input"] == decoded.meta["input"]


def test_export_refuses_a_directory_without_results(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_export_of_one_dopt_file_writes_the_onnx_beside_it(tmp_path, capsys):
    spec = SPECS["mlp"]
    path = tmp_path / "m.dopt"
    path.write_bytes(encode(_random_model(spec, 0, 0.3), 8, {"input": NORM}))
    assert main(["export", str(path)]) == 0
    onnx_bytes = (tmp_path / "m.onnx").read_bytes()
    assert f"{len(onnx_bytes):,} bytes" in capsys.readouterr().out
    model = distopt.load(tmp_path / "m.onnx")
    assert model(_raw_inputs(spec, 4, 0)).shape == (4, 10)


def test_load_refuses_a_broken_onnx_file(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(distopt.ArtifactError, match="ONNX Runtime cannot load it"):
        distopt.load(tmp_path / "x.onnx")


def test_structured_pruned_conv1d_exports_its_narrower_spec():
    from distopt.compress import structured_prune

    spec = SPECS["conv1d"]
    model = _random_model(spec, 0, 0.0)
    pruned = structured_prune(model, 0.5)
    assert pruned.spec.conv_channels == (4, 8) and pruned.spec.dense_units == (6,)
    decoded = decode(encode(pruned, 8, {"input": SIGNALS}))
    assert decoded.model.spec == pruned.spec
    x = _raw_inputs(spec, 64, 0)
    with torch.no_grad():
        ref = decoded.model(InputNorm.from_meta(SIGNALS)(torch.from_numpy(x))).numpy()
    got = session(to_onnx(decoded)).run(None, {INPUT_NAME: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_mixed_bit_widths_export_each_weight_at_its_own_width():
    spec = SPECS["cnn-flatten"]
    model = _random_model(spec, 0, 0.4)
    names = [n for n, _, _ in prunable_weights(model)]  # conv, conv, dense, classifier
    per = dict(zip(names, (8, 4, 16, 32)))
    decoded = decode(encode(model, 8, {"input": NORM}, weight_bits=per))
    proto = onnx.load_from_string(to_onnx(decoded))
    dq_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert len(dq_inputs) == 2  # the 8- and 4-bit weights; 16 and 32 bits are float
    x = _raw_inputs(spec, 128, 0)
    with torch.no_grad():
        ref = decoded.model(InputNorm.from_meta(NORM)(torch.from_numpy(x))).numpy()
    got = session(proto.SerializeToString()).run(None, {INPUT_NAME: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("side", [16, 14, 20])
def test_a_resizing_model_resizes_in_the_graph_as_in_training(side):
    """data.resize: the exported graph takes the stored 28 x 28 images and resizes them with
    ONNX Resize (linear, half_pixel), matching F.interpolate in training and evaluation."""
    spec = ModelSpec("cnn", (1, side, side), 10, (6, 12), (16,), 3)
    norm = {**NORM, "size": [side, side]}
    decoded = decode(encode(_random_model(spec, 0, 0.3), 8, {"input": norm}))
    x = _raw_inputs(SPECS["cnn-flatten"], 200, 0)  # stored images: (200, 1, 28, 28)
    with torch.no_grad():
        ref = decoded.model(InputNorm.from_meta(norm)(torch.from_numpy(x))).numpy()
    got = session(to_onnx(decoded)).run(None, {INPUT_NAME: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_exporters_are_registered_by_name_and_the_cli_offers_each():
    from distopt.cli import build_parser
    from distopt.exporters import EXPORTERS, OnnxExporter, register_exporter

    assert isinstance(EXPORTERS["onnx"], OnnxExporter)
    with pytest.raises(ValueError, match="registered already"):
        register_exporter(OnnxExporter())
    export = next(a for a in build_parser()._subparsers._group_actions[0].choices["export"]
                  ._actions if a.dest == "format")
    assert list(export.choices) == sorted(EXPORTERS)
