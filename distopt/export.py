"""ONNX export of ``.dopt`` artifacts: the same numbers, in the format deployment runtimes read.

The graph is built from the *decoded* artifact, so ONNX Runtime computes what every reported
accuracy measured, and it takes inputs as the dataset stores them: the artifact's input
normalization (``x * scale - mean) / std``) is the graph's first nodes. Weights:

* 8-bit and 4-bit weights are ``int8`` initializers (4-bit codes lie in [-7, 7], one per
  byte) followed by a per-channel ``DequantizeLinear`` (zero point 0; axis 0 = the output
  channel of conv and dense weights, kept in PyTorch's ``(out, in)`` layout with ``Gemm``
  ``transB=1`` so that the axis never needs transposing; axis 1 for embedding columns and for
  recurrent weights, whose ONNX shape is ``(1, gates * hidden, in)``). ONNX Runtime dequantizes
  to exactly ``code * scale`` in float32, the value the ``.dopt`` decoder builds.
* 16-bit and 32-bit weights, and all biases, are float32 initializers (16-bit values are the
  dequantized ``code * scale``: ``DequantizeLinear`` reads int16 only from opset 21, which
  many runtimes lack).
* Pruned zeros are zero codes: they stay zeros (ONNX has no sparse storage, so the ``.onnx``
  file keeps every weight; its bytes are reported beside the ``.dopt`` bytes).

Recurrent layers become ONNX ``RNN``/``GRU``/``LSTM`` nodes, time-major, with PyTorch's gate
blocks reordered to ONNX's (LSTM ``ifgo`` -> ``iofc``; GRU ``rzn`` -> ``zrh`` with
``linear_before_reset=1``). Nothing here imports Ray; ``onnx`` and ``onnxruntime`` are the
optional ``onnx`` extra. The registered exporter that uses this is
:class:`distopt.exporters.OnnxExporter`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from distopt import metrics as M
from distopt.compress import ArtifactError, Decoded
from distopt.models import Net, RecsysNet, RecurrentNet
from distopt.ranking import roc_auc
from distopt.runtime import (INPUT_NAME, META_KEY, OUTPUT_NAME, InputNorm, example_feed,
                             measure_latency_ms, measure_ort_latency_ms, require_onnx, session)

if TYPE_CHECKING:
    import onnx

__all__ = ["OPSET", "ExportError", "parity", "predict", "to_onnx"]

OPSET = 17

# Row blocks of PyTorch's recurrent weights, in the order ONNX wants them.
_GATE_ORDER = {"rnn": [0], "gru": [1, 0, 2], "lstm": [0, 3, 1, 2]}
_CELL_OP = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


class _Graph:
    """Nodes and initializers of one graph, with fresh value names."""

    def __init__(self, decoded: Decoded) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.bits = {e["name"]: e["bits"] for e in decoded.tensors}
        # The quantization axis the artifact records: 1 for embedding columns, else 0 (rows).
        self.axes = {e["name"]: int(e.get("axis", 0)) for e in decoded.tensors}
        self.codes = decoded.codes
        self.n = 0

    def fresh(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def node(self, op: str, inputs: list[str], hint: str | None = None, outputs: int = 1,
             **attrs: Any) -> list[str]:
        outs = [self.fresh(hint or op.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, param: str, value: np.ndarray, rows: list[int] | None = None,
               shape: tuple[int, ...] | None = None) -> str:
        """A weight as stored: int8 codes + DequantizeLinear for 8/4/3/2 bits, else float32.

        ``rows`` reorders (gate blocks of) the quantized axis; ``shape`` reshapes the codes
        around it (recurrent weights get a leading direction axis, so their axis becomes 1)."""
        bits = self.bits.get(param, 32)
        codes = self.codes.get(param)
        if bits in (8, 4, 3, 2) and codes is not None:
            q, scale = codes
            axis = self.axes.get(param, 0)
            if rows is not None:
                q, scale = q[rows], scale[rows]
            q = q.astype(np.int8)
            if shape is not None:
                q, axis = q.reshape(shape), axis + 1
            qn = self.const(f"{param}_q", q)
            sn = self.const(f"{param}_scale", scale.astype(np.float32))
            zn = self.const(f"{param}_zero", np.zeros(scale.shape, np.int8))
            return self.node("DequantizeLinear", [qn, sn, zn], f"{param}_dq", axis=axis)[0]
        w = value[rows] if rows is not None else value
        w = w.reshape(shape) if shape is not None else w
        return self.const(param, w.astype(np.float32))


def _float(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _normalize(g: _Graph, x: str, meta: dict[str, Any]) -> str:
    norm = meta.get("input")
    if not isinstance(norm, dict):
        raise ArtifactError("the artifact records no input normalization, so the exported "
                            "graph could not take raw inputs")
    if norm.get("tokens"):
        return x
    if norm.get("column_mean"):  # tabular: per column (bucket ids: 0 and 1, exact)
        x = g.node("Sub", [x, g.const("column_mean", np.array(norm["column_mean"], np.float32))],
                   "centered")[0]
        return g.node("Div", [x, g.const("column_std", np.array(norm["column_std"],
                                                                np.float32))], "standardized")[0]
    x = g.node("Mul", [x, g.const("input_scale", np.float32(norm["scale"]))], "scaled")[0]
    if norm.get("size"):  # data.resize: bilinear, half-pixel centers, as F.interpolate did
        batch_channels = g.node("Slice", [g.node("Shape", [x], "shape")[0],
                                          g.const("zero", np.array([0], np.int64)),
                                          g.const("two", np.array([2], np.int64))], "bc")[0]
        sizes = g.node("Concat", [batch_channels,
                                  g.const("size", np.array(norm["size"], np.int64))],
                       "sizes", axis=0)[0]
        x = g.node("Resize", [x, "", "", sizes], "resized", mode="linear",
                   coordinate_transformation_mode="half_pixel")[0]
    x = g.node("Sub", [x, g.const("input_mean", np.float32(norm["mean"]))], "centered")[0]
    return g.node("Div", [x, g.const("input_std", np.float32(norm["std"]))], "standardized")[0]


def _head(g: _Graph, x: str, head: nn.Sequential, prefix: str) -> str:
    for i, m in enumerate(head):
        name = f"{prefix}.{i}"
        if isinstance(m, nn.Flatten):
            x = g.node("Flatten", [x], "flat", axis=1)[0]
        elif isinstance(m, nn.Linear):
            w = g.weight(f"{name}.weight", _float(m.weight))
            b = [] if m.bias is None else [g.const(f"{name}.bias", _float(m.bias))]
            x = g.node("Gemm", [x, w, *b], f"{name}.gemm", transB=1)[0]
        elif isinstance(m, nn.ReLU):
            x = g.node("Relu", [x])[0]
        elif not isinstance(m, nn.Dropout):  # dropout is the identity at inference
            raise TypeError(f"cannot export {type(m).__name__} ({name})")
    return x


def _net(g: _Graph, x: str, model: Net) -> str:
    for i, m in enumerate(model.features):
        name = f"features.{i}"
        if isinstance(m, nn.Conv2d):
            w = g.weight(f"{name}.weight", _float(m.weight))
            bias = [] if m.bias is None else [g.const(f"{name}.bias", _float(m.bias))]
            inputs = [x, w, *bias]
            ph, pw = m.padding if isinstance(m.padding, tuple) else (0, 0)
            x = g.node("Conv", inputs, f"{name}.conv", kernel_shape=list(m.kernel_size),
                       strides=[1, 1], pads=[ph, pw, ph, pw], group=m.groups)[0]
        elif isinstance(m, nn.ReLU):
            x = g.node("Relu", [x])[0]
        elif isinstance(m, nn.MaxPool2d):
            k = list(m.kernel_size) if isinstance(m.kernel_size, tuple) else [m.kernel_size] * 2
            x = g.node("MaxPool", [x], "pool", kernel_shape=k, strides=k)[0]
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            x = g.node("GlobalAveragePool", [x], "gap")[0]
        else:
            raise TypeError(f"cannot export {type(m).__name__} ({name}); fold BatchNorm first")
    return _head(g, x, model.classifier, "classifier")


def _recurrent(g: _Graph, x: str, model: RecurrentNet) -> str:
    spec = model.spec
    if model.embedding is not None:
        table = g.weight("embedding.weight", _float(model.embedding.weight))
        ids = g.node("Cast", [x], "ids", to=7)[0]  # int64
        h = g.node("Gather", [table, ids], "embedded", axis=0)[0]  # (B, L, E)
        seq = g.node("Transpose", [h], "time_major", perm=[1, 0, 2])[0]  # (L, B, E)
    else:
        c, rows, w = spec.in_shape
        t = g.node("Transpose", [x], "rows", perm=[2, 0, 1, 3])[0]  # (H, B, C, W)
        seq = g.node("Reshape", [t, g.const("seq_shape", np.array([rows, -1, c * w], np.int64))],
                     "time_major")[0]
    gates = _GATE_ORDER[spec.cell]
    last = ""
    for i, layer in enumerate(model.recurrent):
        units = layer.hidden_size
        order = [blk * units + j for blk in gates for j in range(units)]
        p = f"recurrent.{i}"
        n_in = layer.input_size
        w = g.weight(f"{p}.weight_ih_l0", _float(layer.weight_ih_l0), order,
                     (1, len(gates) * units, n_in))
        r = g.weight(f"{p}.weight_hh_l0", _float(layer.weight_hh_l0), order,
                     (1, len(gates) * units, units))
        bias = np.concatenate([_float(layer.bias_ih_l0)[order], _float(layer.bias_hh_l0)[order]])
        b = g.const(f"{p}.bias", bias[None])
        attrs: dict[str, Any] = {"hidden_size": units}
        if spec.cell == "gru":
            attrs["linear_before_reset"] = 1
        y, y_h = g.node(_CELL_OP[spec.cell], [seq, w, r, b], f"{p}.{spec.cell}",
                        outputs=3 if spec.cell == "lstm" else 2, **attrs)[:2]
        # Y: (L, 1, B, H) -> the next layer's (L, B, H); Y_h: (1, B, H) -> the last step.
        seq = g.node("Squeeze", [y, g.const("axis1", np.array([1], np.int64))], "seq")[0]
        last = y_h
    h = g.node("Squeeze", [last, g.const("axis0", np.array([0], np.int64))], "last_step")[0]
    return _head(g, h, model.classifier, "classifier")


def to_onnx(decoded: Decoded, source: str = "artifact") -> bytes:
    """The ONNX model (serialized ``ModelProto``) of a decoded artifact: raw inputs in
    (``float32`` values as the dataset stores them, or ``int64`` token ids), logits out,
    batch size dynamic. The artifact's meta is kept as JSON in the model's metadata.

    Raises :class:`ExportError` for a model of the user's own family: the graph is built per
    built-in family."""
    if decoded.integer is not None:
        raise ExportError(f"{source}: an integer model (8-bit activations); its ONNX graph "
                          "would compute in float, not as the integer reference: export it "
                          "with --format c")
    if decoded.model.spec.family == "external":
        raise ExportError(f"{source}: ONNX export covers the built-in families; "
                          f"{decoded.model.spec.factory} (your own model) has none yet; its "
                          ".dopt file and distopt.load work")
    require_onnx()
    import onnx
    from onnx import TensorProto, helper

    model = decoded.model.eval()
    spec = model.spec
    g = _Graph(decoded)
    in_type = TensorProto.INT64 if spec.tokens else TensorProto.FLOAT
    norm = decoded.meta.get("input") if isinstance(decoded.meta, dict) else None
    # A resizing model takes inputs as stored, whose height and width the file does not keep.
    in_shape = [spec.in_shape[0], "height", "width"] if isinstance(norm, dict) and \
        norm.get("size") else list(spec.in_shape)
    x = _normalize(g, INPUT_NAME, decoded.meta)
    out = _GRAPHS[type(model)](g, x, model)
    g.nodes.append(helper.make_node("Identity", [out], [OUTPUT_NAME], name=OUTPUT_NAME))
    graph = helper.make_graph(
        g.nodes, f"distopt_{spec.family}",
        [helper.make_tensor_value_info(INPUT_NAME, in_type, ["batch", *in_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                       ["batch", spec.num_classes])],
        g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="distopt")
    proto.ir_version = 8  # what opset 17 needs; readable by every ONNX Runtime since 1.10
    helper.set_model_props(proto, {META_KEY: json.dumps(decoded.meta, separators=(",", ":"))})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:  # a bug here, not in the user's file
        raise RuntimeError(f"{source}: the exported ONNX graph is invalid: {e}") from e
    return proto.SerializeToString()


def _recsys(g: _Graph, x: str, model: RecsysNet) -> str:
    """Id columns cast to int64 and folded onto each table as :func:`distopt.models.fold_ids`
    does (``Where(id == 0, 0, 1 + Mod(id - 1, rows - 1))``), looked up with ``Gather``; the
    numbers through ``Gemm`` + ``Relu``; then ``Concat`` (mlp) or the Gram matrix's upper
    triangle (dot), and the head."""
    k, n_cols = len(model.embeddings), model.spec.in_shape[0]
    axis1 = g.const("axis1", np.array([1], np.int64))

    def columns(lo: int, hi: int, hint: str) -> str:
        return g.node("Slice", [x, g.const(f"{hint}_from", np.array([lo], np.int64)),
                                g.const(f"{hint}_to", np.array([hi], np.int64)), axis1], hint)[0]

    ids = g.node("Cast", [columns(0, k, "id_columns")], "ids", to=7)[0]  # int64
    zero, one = g.const("zero", np.array(0, np.int64)), g.const("one", np.array(1, np.int64))
    vectors, dense = [], None  # each (B, 1, d)
    for i, table in enumerate(model.embeddings):
        col = g.node("Gather", [ids, g.const(f"column{i}", np.array([i], np.int64))],
                     f"id{i}", axis=1)[0]  # (B, 1)
        shifted = g.node("Sub", [col, one], f"id{i}_minus1")[0]
        folded = g.node("Add", [one, g.node("Mod", [shifted, g.const(
            f"rows{i}", np.array(table.num_embeddings - 1, np.int64))], f"id{i}_mod")[0]],
            f"id{i}_folded")[0]
        row = g.node("Where", [g.node("Equal", [col, zero], f"id{i}_oov")[0], zero, folded],
                     f"row{i}")[0]
        w = g.weight(f"embeddings.{i}.weight", _float(table.weight))
        vectors.append(g.node("Gather", [w, row], f"embedded{i}", axis=0)[0])
    if model.numeric is not None:
        lin = model.numeric[0]
        dense = g.node("Relu", [g.node("Gemm", [
            columns(k, n_cols, "numbers"), g.weight("numeric.0.weight", _float(lin.weight)),
            g.const("numeric.0.bias", _float(lin.bias))], "numeric.gemm", transB=1)[0]],
            "numeric_relu")[0]  # (B, d)
        vectors.append(g.node("Unsqueeze", [dense, axis1], "numeric_vector")[0])
    stacked = g.node("Concat", vectors, "stacked", axis=1)[0]  # (B, m, d)
    if model.interact is None:
        h = g.node("Flatten", [stacked], "concat", axis=1)[0]  # torch.cat's order
    else:
        gram = g.node("MatMul", [stacked, g.node("Transpose", [stacked], "stacked_t",
                                                 perm=[0, 2, 1])[0]], "gram")[0]
        flat = g.node("Flatten", [gram], "gram_flat", axis=1)[0]
        pairs = g.node("Gather", [flat, g.const("pairs", model.interact.pairs.numpy())],
                       "pairs", axis=1)[0]
        h = g.node("Concat", [pairs, dense], "interactions", axis=1)[0] \
            if dense is not None else pairs
    return _head(g, h, model.classifier, "classifier")


# The graph writer of each built-in family's module.
_GRAPHS: dict[type[nn.Module], Callable[..., str]] = {Net: _net, RecurrentNet: _recurrent,
                                                      RecsysNet: _recsys}


# --------------------------------------------------------------------------------------------
# A search's front, exported and checked against PyTorch
# --------------------------------------------------------------------------------------------


def predict(model: Callable[[np.ndarray], Any], x: np.ndarray, batch: int = 1024
            ) -> np.ndarray:
    """Logits of ``model`` over ``x`` in batches, as a float32 array."""
    outs = [np.asarray(model(x[s:s + batch]), np.float32) for s in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def reference_logits(decoded: Decoded, x: np.ndarray) -> np.ndarray:
    """The decoded PyTorch model's logits on raw inputs (as stored), in batches (an integer
    model's: its integer reference's, dequantized): what every exported format is checked
    against."""
    norm = InputNorm.from_meta(decoded.meta["input"])
    model = decoded.reference.eval()
    with torch.inference_mode():
        return predict(lambda b: model(norm(torch.from_numpy(b))).numpy(), x)


def integer_reference(decoded: Decoded, x: np.ndarray, batch: int = 500
                      ) -> tuple[np.ndarray, np.ndarray]:
    """An integer model's int8 inputs (its input grid, ``(N, C, H, W)``) and int8 logits (as
    float32) on raw inputs ``x``, in batches: what the C and TFLite checks feed their runtime
    and compare with."""
    integer = decoded.integer
    assert integer is not None, "integer_reference needs an integer model"
    norm = InputNorm.from_meta(decoded.meta["input"])
    qs, refs = [], []
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            q = integer.quantize_input(norm(torch.from_numpy(np.asarray(x[s:s + batch],
                                                                        np.float32))))
            qs.append(q.numpy().astype(np.int8))
            refs.append(integer.int8(q).numpy().astype(np.float32))
    if not qs:
        return (np.zeros((0, *decoded.model.spec.in_shape), np.int8),
                np.zeros((0, decoded.model.spec.num_classes), np.float32))
    return np.concatenate(qs), np.concatenate(refs)


def compare(ref: np.ndarray, got: np.ndarray, y: np.ndarray, runtime: str) -> dict[str, float]:
    """An exported model's logits ``got`` against the decoded model's ``ref`` on labels ``y``:
    both accuracies (and, for two classes, both ROC AUCs of class 1's logit margin), the
    fraction of identical predictions, the largest logit difference."""
    out = {
        "test_accuracy_pytorch": float((ref.argmax(1) == y).mean()),
        f"test_accuracy_{runtime}": float((got.argmax(1) == y).mean()),
        "agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(ref - got).max()) if len(y) else 0.0,
        "samples": int(len(y)),
    }
    if ref.ndim == 2 and ref.shape[1] == 2 and len(y):
        out["test_auc_pytorch"] = roc_auc(ref[:, 1] - ref[:, 0], y)
        out[f"test_auc_{runtime}"] = roc_auc(got[:, 1] - got[:, 0], y)
    return out


def parity(decoded: Decoded, onnx_bytes: bytes, x: np.ndarray, y: np.ndarray
           ) -> dict[str, float]:
    """ONNX Runtime against the decoded PyTorch model on ``(x, y)`` (raw inputs, as stored):
    :func:`compare`, and batch-1 one-thread latency in both runtimes, side by side."""
    sess = session(onnx_bytes)
    dtype = np.int64 if decoded.model.spec.tokens else np.float32
    got = predict(lambda b: sess.run(None, {INPUT_NAME: b.astype(dtype)})[0], x)
    spec = decoded.model.spec
    return {
        **compare(reference_logits(decoded, x), got, y, "onnxruntime"),
        M.LATENCY_MS: measure_latency_ms(decoded.model.eval(), spec),
        M.ORT_LATENCY_MS: measure_ort_latency_ms(onnx_bytes, example_feed(spec)),
    }


class ExportError(ValueError):
    """The export cannot start: no search results there, or no such trial on the front."""
