"""An integer model (8-bit activations) as a TensorFlow Lite flatbuffer in the TFLite int8
quantization spec, for TensorFlow Lite Micro: the integer reference's numbers written as they
are, no converter in between.

Why written directly rather than converted: a converter (TensorFlow's, or ai-edge-torch) would
re-derive the quantization from a float graph (its own calibration and rounding), so the file
would no longer be the model distopt measured; TensorFlow is also a multi-GB dependency. Here
every tensor is the decoded file's: weights the file's integer codes (int8 containers; 2-4 bit
codes stay within them), per-channel float32 weight scales, int32 biases, each activation's
scale and zero point from the file's grids, so TFLM's kernels compute the same integers as
:class:`~distopt.compress.integer.IntegerNet` (TFLM's Prepare derives the same fixed-point
multipliers from those float scales, in double, as distopt does).

The graph, NHWC as TFLite is: input int8 ``(1, H, W, C)`` on the input's grid (``pixel -
128`` for 8-bit pixels), ``CONV_2D`` (``DEPTHWISE_CONV_2D`` for a separable or depthwise
block's depthwise conv) with the ReLU fused, ``MAX_POOL_2D``, ``AVERAGE_POOL_2D`` over the whole map for a gap
head, ``RESHAPE`` to a row, ``FULLY_CONNECTED``; output int8 logits ``(1, classes)``. The first
dense layer's columns are permuted from distopt's channel-major flatten to TFLite's
channel-last one. Schema: the object API that the ``tflite-micro`` package ships
(``schema_py_generated``), serialized with ``flatbuffers``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from distopt.compress import Decoded
from distopt.compress.integer import IntegerNet, IntLayer, IntPool
from distopt.export import ExportError
from distopt.models.cost import ALIASING, trace

__all__ = ["TFLITE_PACKAGE", "require_tflite", "tflite_bytes", "to_nhwc"]

TFLITE_PACKAGE = "tflite-micro"  # what `pip install distopt[tflite]` installs


def require_tflite() -> Any:
    """The flatbuffer schema module of the ``tflite-micro`` package; ImportError naming the
    extra if it is not installed."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError:
        raise ImportError("TensorFlow Lite export needs the tflite-micro package: "
                          "pip install 'distopt[tflite]'") from None
    return schema_py_generated


def to_nhwc(q: np.ndarray) -> np.ndarray:
    """Inputs ``(N, C, H, W)`` as TFLite takes them, ``(N, H, W, C)``."""
    return np.ascontiguousarray(q.transpose(0, 2, 3, 1))


class _Graph:
    """Tensors, buffers, operator codes and operators of one subgraph, as schema objects."""

    def __init__(self, schema: Any) -> None:
        self.s = schema
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0: empty, by convention
        self.codes: dict[int, int] = {}
        self.op_codes: list[Any] = []
        self.ops: list[Any] = []

    def tensor(self, name: str, shape: list[int], ttype: int, scale: list[float] | None = None,
               zero_point: list[int] | None = None, dim: int = 0,
               data: np.ndarray | None = None) -> int:
        s = self.s
        t = s.TensorT()
        t.name, t.shape, t.type = name, [int(v) for v in shape], ttype
        t.buffer = 0
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            qp = s.QuantizationParametersT()
            qp.scale = [float(v) for v in scale]
            qp.zeroPoint = [int(v) for v in (zero_point or [0] * len(scale))]
            qp.quantizedDimension = dim
            t.quantization = qp
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int,
           options: Any) -> None:
        s = self.s
        if code not in self.codes:
            oc = s.OperatorCodeT()
            oc.builtinCode = oc.deprecatedBuiltinCode = code
            oc.version = 1
            self.codes[code] = len(self.op_codes)
            self.op_codes.append(oc)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[code], inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.ops.append(o)


def tflite_bytes(decoded: Decoded, source: str = "artifact") -> bytes:
    """The ``.tflite`` flatbuffer of a decoded integer model (see the module's docstring).
    Raises :class:`ExportError` for a float model (TFLite Micro's int8 kernels need integer
    activations) and ImportError without the ``tflite-micro`` package."""
    integer = decoded.integer
    if not isinstance(integer, IntegerNet):
        raise ExportError(f"{source}: TensorFlow Lite export takes integer models "
                          "(compress.quantize.activation_bits 8); this one computes in float")
    s = require_tflite()
    import flatbuffers

    spec = decoded.model.spec
    calls = [c for c in trace(decoded.model, spec)
             if not isinstance(c.module, (*ALIASING, nn.Sequential))]
    g = _Graph(s)
    c, h, w = spec.in_shape
    grid = integer.input
    cur = g.tensor("input", [1, h, w, c], s.TensorType.INT8, [grid.scale], [grid.zero_point])
    first = cur
    chw: tuple[int, ...] = (c, h, w)  # the current activations' shape, distopt's order
    flat = False
    relu = {True: s.ActivationFunctionType.RELU, False: s.ActivationFunctionType.NONE}
    for k, (call, op) in enumerate(zip(calls, integer.ops, strict=True)):
        out_shape = tuple(int(v) for v in call.output.shape[1:])
        name = f"t{k}"
        if isinstance(op, IntLayer):
            out_grid, w_scale = op.out, op.weight_scale
            fused = relu[op.act_min == op.zp_out and op.act_min != -128]
            codes = op.codes.numpy().astype(np.int8)
            b_scale = (np.float32(grid.scale) * w_scale.astype(np.float64)).tolist()
            bias = op.bias.numpy() if op.bias is not None else np.zeros(len(w_scale), np.int64)
            b = g.tensor(f"{op.key}.bias", [len(bias)], s.TensorType.INT32, b_scale,
                         data=bias.astype(np.int32))
            if op.conv is not None:
                m = op.conv
                if tuple(m.stride) != (1, 1) or tuple(m.dilation) != (1, 1):
                    raise ExportError(f"{source}: {op.key}: TFLite export takes stride-1 convs")
                pad = s.Padding.VALID if tuple(m.padding) == (0, 0) else s.Padding.SAME
                depthwise = m.groups > 1
                if depthwise and not (m.groups == m.in_channels == m.out_channels):
                    raise ExportError(f"{source}: {op.key}: grouped convs other than "
                                      "depthwise have no TFLite kernel")
                if depthwise:  # (C, 1, KH, KW) -> (1, KH, KW, C), scales along dim 3
                    wt = g.tensor(op.key, [1, *codes.shape[2:], codes.shape[0]],
                                  s.TensorType.INT8, w_scale.tolist(), dim=3,
                                  data=codes.transpose(1, 2, 3, 0))
                    opts = s.DepthwiseConv2DOptionsT()
                    opts.depthMultiplier = 1
                    code, otype = s.BuiltinOperator.DEPTHWISE_CONV_2D, \
                        s.BuiltinOptions.DepthwiseConv2DOptions
                else:  # (O, I, KH, KW) -> (O, KH, KW, I)
                    wt = g.tensor(op.key, [codes.shape[0], *codes.shape[2:], codes.shape[1]],
                                  s.TensorType.INT8, w_scale.tolist(), dim=0,
                                  data=codes.transpose(0, 2, 3, 1))
                    opts = s.Conv2DOptionsT()
                    code, otype = s.BuiltinOperator.CONV_2D, s.BuiltinOptions.Conv2DOptions
                opts.padding, opts.strideW, opts.strideH = pad, 1, 1
                opts.dilationWFactor = opts.dilationHFactor = 1
                opts.fusedActivationFunction = fused
                out = g.tensor(name, [1, out_shape[1], out_shape[2], out_shape[0]],
                               s.TensorType.INT8, [out_grid.scale], [out_grid.zero_point])
                g.op(code, [cur, wt, b], [out], otype, opts)
            else:
                if not flat:
                    n = math.prod(chw)
                    shape_t = g.tensor(f"{name}.shape", [2], s.TensorType.INT32,
                                       data=np.array([1, n], np.int32))
                    row = g.tensor(f"{name}.row", [1, n], s.TensorType.INT8, [grid.scale],
                                   [grid.zero_point])
                    ro = s.ReshapeOptionsT()
                    ro.newShape = [1, n]
                    g.op(s.BuiltinOperator.RESHAPE, [cur, shape_t], [row],
                         s.BuiltinOptions.ReshapeOptions, ro)
                    cur, flat = row, True
                    if len(chw) == 3 and chw[0] > 1 and chw[1] * chw[2] > 1:
                        # distopt flattens C x H x W, TFLite H x W x C: permute the columns.
                        codes = codes.reshape(len(codes), *chw).transpose(0, 2, 3, 1) \
                            .reshape(len(codes), -1)
                wt = g.tensor(op.key, list(codes.shape), s.TensorType.INT8, w_scale.tolist(),
                              dim=0, data=codes)
                opts = s.FullyConnectedOptionsT()
                opts.fusedActivationFunction = fused
                out = g.tensor(name, [1, out_shape[-1]], s.TensorType.INT8, [out_grid.scale],
                               [out_grid.zero_point])
                g.op(s.BuiltinOperator.FULLY_CONNECTED, [cur, wt, b], [out],
                     s.BuiltinOptions.FullyConnectedOptions, opts)
            grid = out_grid
        else:
            assert isinstance(op, IntPool)
            if flat:
                raise ExportError(f"{source}: pooling after a dense layer has no TFLite form")
            kh, kw = op.kernel if op.kernel is not None else chw[1:]
            opts = s.Pool2DOptionsT()
            opts.padding, opts.strideW, opts.strideH = s.Padding.VALID, kw, kh
            opts.filterWidth, opts.filterHeight = kw, kh
            opts.fusedActivationFunction = s.ActivationFunctionType.NONE
            out = g.tensor(name, [1, out_shape[1], out_shape[2], out_shape[0]],
                           s.TensorType.INT8, [grid.scale], [grid.zero_point])
            code = s.BuiltinOperator.MAX_POOL_2D if op.kernel is not None \
                else s.BuiltinOperator.AVERAGE_POOL_2D
            g.op(code, [cur], [out], s.BuiltinOptions.Pool2DOptions, opts)
        cur, chw = out, out_shape
    sub = s.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators = g.tensors, [first], [cur], g.ops
    sub.name = "main"
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, g.op_codes, [sub]
    model.buffers = g.buffers
    model.description = f"distopt integer model {source}"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
