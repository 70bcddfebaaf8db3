"""A decoded artifact as one self-contained C99 source file: the weights as ``const`` arrays
packed exactly as ``flash_bytes`` counts them (codes at their bit width, float32 scales,
codebooks and biases), one static activation arena of exactly ``peak_ram_bytes``, and the
layer calls in execution order (:mod:`distopt.c_kernels`). What a microcontroller toolchain
compiles as it is; ``distopt export --format c`` writes it and checks it, compiled by the
machine's C compiler, against the decoded PyTorch model.

The API of the generated file::

    void distopt_predict(const float *raw, float *logits);  /* raw: the stored values */
    uint32_t distopt_flash_bytes(void);  /* sizeof every weight, scale, codebook, bias array */
    uint32_t distopt_arena_bytes(void);  /* sizeof the activation arena */

``raw`` holds one input as the data stores it (pixels 0-255, channel-major ``C x H x W``); the
file applies the artifact's input normalization itself. Families: ``cnn``, ``conv1d`` and
``mlp`` (the recurrent family and your own are refused, saying so); inputs that ``data.resize``
resizes are refused too. An integer model (8-bit activations) is written by
:mod:`distopt.c_integer`: int8 in, int8 logits out, no float at all.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from distopt.c_integer import integer_c_source
from distopt.c_kernels import KERNELS, pack_bits
from distopt.compress import Decoded
from distopt.compress.flash import codebook_layout
from distopt.export import ExportError
from distopt.models import Net
from distopt.models.cost import ALIASING, activation_cost, trace
from distopt.runtime import InputNorm

__all__ = ["CExportError", "c_source"]


class CExportError(ExportError):
    """This model cannot be written as C (yet): the message says why."""


def _floats(name: str, values: np.ndarray) -> str:
    body = ", ".join(f"{float(v)!r}f" if math.isfinite(float(v)) else "0.0f"
                     for v in np.asarray(values, np.float32).reshape(-1).tolist())
    return f"static const float {name}[{max(values.size, 1)}] = {{{body}}};"


def _bytes(name: str, data: bytes) -> str:
    body = ", ".join(str(b) for b in data)
    return f"static const uint8_t {name}[{max(len(data), 1)}] = {{{body}}};"


class _Writer:
    """Collects the const arrays (and their bytes, for the flash check) and the calls."""

    def __init__(self, decoded: Decoded) -> None:
        self.entries = {t["name"]: t for t in decoded.tensors}
        self.codes = decoded.codes
        self.arrays: list[str] = []
        self.names: list[str] = []  # every const array: distopt_flash_bytes sums their sizes

    def array(self, text: str, name: str) -> None:
        self.arrays.append(text)
        self.names.append(name)

    def tensor(self, key: str, param: torch.Tensor, rows: int) -> str:
        """A ``dw_tensor`` for weight ``key`` as the file codes it; returns its C name."""
        entry, ident = self.entries[key], "w_" + key.replace(".", "_")
        w = param.detach().cpu().numpy().astype(np.float32)
        bits = int(entry["bits"])
        if entry.get("coding") == "codebook":
            size, bits = codebook_layout(entry)  # the values (a zero too) and index width
            used = np.unique(w)  # sorted; what the decoded weights take of the codebook
            if len(used) > size:
                raise CExportError(f"{key}: {len(used)} distinct values in a codebook of "
                                   f"{size}")
            book = np.concatenate([used, np.zeros(size - len(used), np.float32)])
            index = np.searchsorted(used, w)
            self.array(_bytes(ident + "_p", pack_bits(index, bits)), ident + "_p")
            self.array(_floats(ident + "_v", book), ident + "_v")
            init = f"{{W_CODEBOOK, {bits}u, {w.size // rows}u, {ident}_p, {ident}_v, 0}}"
        elif bits < 32:
            codes, scale = self.codes[key]
            if entry.get("scales") == "tensor":  # one scale, which every weight takes
                scale, rows = scale[:1], 1
            kind = "W_ODD" if entry.get("levels") == "odd" else "W_CODES"
            if kind == "W_ODD":  # the odd code 2k + 1 packed as k: bits wide
                codes = (codes - 1) // 2
            self.array(_bytes(ident + "_p", pack_bits(codes, bits)), ident + "_p")
            self.array(_floats(ident + "_s", scale), ident + "_s")
            init = f"{{{kind}, {bits}u, {w.size // rows}u, {ident}_p, 0, {ident}_s}}"
        else:
            self.array(_floats(ident + "_v", w), ident + "_v")
            init = f"{{W_FLOAT, 32u, {w.size // rows}u, 0, {ident}_v, 0}}"
        self.arrays.append(f"static const dw_tensor {ident} = {init};")
        return ident

    def bias(self, key: str, param: torch.Tensor | None) -> str:
        if param is None:
            return "0"
        ident = "b_" + key.replace(".", "_")
        self.array(_floats(ident, param.detach().cpu().numpy()), ident)
        return ident


def c_source(decoded: Decoded, source: str = "") -> str:
    """The C file of a decoded artifact (see the module's docstring)."""
    model, spec = decoded.model, decoded.model.spec
    if not isinstance(model, Net):
        raise CExportError(f"{source or 'this model'}: family {spec.family!r}; C export takes "
                           "the cnn, conv1d and mlp families (rnn, recsys and your own: not yet)")
    norm = InputNorm.from_meta(decoded.meta.get("input") or
                               {"scale": 1.0, "mean": 0.0, "std": 1.0})
    if norm.size is not None:
        raise CExportError(f"{source or 'this model'}: its inputs are resized (data.resize); "
                           "C export takes inputs at their stored size (not yet resized)")
    if decoded.integer is not None:
        return integer_c_source(decoded, source)
    calls = trace(model, spec)
    arena = activation_cost(model, spec, calls=calls)["peak_ram_bytes"] // 4
    names = {id(p): n for n, p in model.named_parameters()}
    out = _Writer(decoded)
    body: list[str] = []
    size = math.prod(spec.in_shape)
    body.append(f"    for (int i = 0; i < {size}; i++) "
                f"a[i] = (raw[i] * {norm.scale!r}f - {norm.mean!r}f) / {norm.std!r}f;")
    cur, at_start = "a", True  # the current activations, at the arena's start or end
    for call in calls:
        m, i, o = call.module, tuple(call.inputs[0].shape[1:]), tuple(call.output.shape[1:])
        n_out = math.prod(o)
        dst = "a" if not at_start else f"a + {arena - n_out}"
        if isinstance(m, nn.Conv2d):
            w = out.tensor(names[id(m.weight)], m.weight, m.out_channels)
            b = out.bias(names[id(m.bias)] if m.bias is not None else "", m.bias)
            body.append(f"    dw_conv2d({cur}, {dst}, {i[0]}, {i[1]}, {i[2]}, {o[0]}, {o[1]}, "
                        f"{o[2]}, {m.kernel_size[0]}, {m.kernel_size[1]}, {m.padding[0]}, "
                        f"{m.padding[1]}, {m.groups}, &{w}, {b});")
        elif isinstance(m, nn.Linear):
            w = out.tensor(names[id(m.weight)], m.weight, m.out_features)
            b = out.bias(names[id(m.bias)] if m.bias is not None else "", m.bias)
            body.append(f"    dw_dense({cur}, {dst}, {m.in_features}, {m.out_features}, &{w}, "
                        f"{b});")
        elif isinstance(m, nn.MaxPool2d):
            k = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) \
                else m.kernel_size
            body.append(f"    dw_maxpool({cur}, {dst}, {i[0]}, {i[1]}, {i[2]}, {k[0]}, {k[1]});")
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            body.append(f"    dw_avgpool_all({cur}, {dst}, {i[0]}, {i[1]}, {i[2]});")
        elif isinstance(m, nn.ReLU):  # in place, on the current buffer
            body.append(f"    dw_relu({cur}, {math.prod(i)});")
            continue
        elif isinstance(m, (*ALIASING, nn.Sequential)):
            continue  # the same buffer: flatten keeps C x H x W order; dropout is off (an
            # empty Sequential: the mlp family's conv blocks)
        else:
            raise CExportError(f"{source or 'this model'}: layer {type(m).__name__} has no C "
                               "kernel")
        cur, at_start = dst, not at_start
    body.append(f"    for (int i = 0; i < {spec.num_classes}; i++) logits[i] = ({cur})[i];")
    flash = " + ".join(f"sizeof({n})" for n in out.names) or "0"
    return "\n".join([
        f"/* distopt model {source.replace('*/', '* /')}: generated by distopt export "
        "--format c; do not edit.",
        f"   family {spec.family}, input {' x '.join(map(str, spec.in_shape))} raw values, "
        f"{spec.num_classes} logits. */",
        KERNELS, *out.arrays,
        f"static float a[{arena}]; /* the activations: the largest input + output of a layer */",
        "", "void distopt_predict(const float *raw, float *logits) {", *body, "}", "",
        f"uint32_t distopt_flash_bytes(void) {{ return (uint32_t)({flash}); }}",
        "uint32_t distopt_arena_bytes(void) { return (uint32_t)sizeof(a); }", ""])
