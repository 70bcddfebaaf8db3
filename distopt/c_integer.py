"""An integer model (8-bit activations, :mod:`distopt.compress.integer`) as one self-contained
C99 file: no float, no libm, no heap. Weights are the file's codes packed at their bit width,
each output channel's requantization as an ``int32`` multiplier and ``int8`` shift, biases
``int32``: exactly what ``flash_bytes`` counts for an integer model. Activations live in one
static ``int8`` arena of exactly ``peak_ram_bytes``. The constants are the integer reference's
(:class:`~distopt.compress.integer.IntegerNet`), written as they are, and the kernels compute
its arithmetic step by step, so the two agree bit for bit (tested).

The API of the generated file::

    void distopt_predict(const int8_t *in, int8_t *logits); /* int8 in, int8 logits out */
    uint32_t distopt_flash_bytes(void);
    uint32_t distopt_arena_bytes(void);

``in`` holds one input on the input's int8 grid (``round(x / scale) + zero_point`` of the
normalized input ``x``; for 8-bit pixels calibrated over 0-255 that is ``pixel - 128``): the
grid and the logits' grid are in the file's header comment.
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from distopt.c_kernels import PACKED_BITS, pack_bits
from distopt.compress import Decoded
from distopt.compress.integer import IntegerNet, IntLayer, IntPool
from distopt.export import ExportError
from distopt.models.cost import ALIASING, activation_cost, trace

__all__ = ["INT_KERNELS", "integer_c_source"]

INT_KERNELS = PACKED_BITS + r"""
/* A weight tensor of an integer model: codes of `bits` bits (two's complement, packed LSB first
   across bytes), and per output channel (or once for the tensor, qstep 0) the fixed-point
   multiplier and shift that take the int32 accumulator to the output's grid. */
typedef struct {
    uint32_t bits;
    uint32_t qstep; /* 1: a multiplier and shift per output channel; 0: one for the tensor */
    uint32_t odd;   /* 1: a packed k stands for the odd code 2k + 1 (levels without a zero) */
    const uint8_t *packed;
    const int32_t *mult;
    const int8_t *shift;
} dq_tensor;

static inline int32_t dq_code(const dq_tensor *w, uint32_t i) {
    uint32_t v = dw_bits_at(w->packed, i, w->bits);
    int32_t k = (v & (1u << (w->bits - 1u))) ? (int32_t)(v | ~((1u << w->bits) - 1u)) : (int32_t)v;
    return w->odd ? 2 * k + 1 : k;
}

/* gemmlowp's saturating rounding doubling high multiply and rounding right shift. */
static inline int32_t dq_high_mul(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static inline int32_t dq_shift_right(int32_t x, int e) {
    int32_t mask = (int32_t)((1u << e) - 1u);
    int32_t rem = x & mask, threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > threshold ? 1 : 0);
}

static inline int32_t dq_requant(int32_t acc, int32_t mult, int shift) {
    int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    int64_t x = (int64_t)acc * ((int64_t)1 << left);
    if (x > INT32_MAX) x = INT32_MAX;
    if (x < INT32_MIN) x = INT32_MIN;
    return dq_shift_right(dq_high_mul((int32_t)x, mult), right);
}

static inline int8_t dq_out(int32_t acc, const dq_tensor *w, int co, int32_t zp_out,
                            int32_t act_min) {
    int32_t v = dq_requant(acc, w->mult[co * w->qstep], w->shift[co * w->qstep]) + zp_out;
    if (v < act_min) v = act_min;
    if (v > 127) v = 127;
    return (int8_t)v;
}

/* in: C x H x W, out: CO x HO x WO; stride 1; zero padding (the input's zero point). */
static inline void dq_conv2d(const int8_t *in, int8_t *out, int C, int H, int W, int CO, int HO,
                             int WO, int KH, int KW, int PH, int PW, int G, const dq_tensor *w,
                             const int32_t *bias, int32_t zp_in, int32_t zp_out,
                             int32_t act_min) {
    int cin = C / G, cog = CO / G;
    for (int co = 0; co < CO; co++) {
        int g = co / cog;
        for (int y = 0; y < HO; y++) {
            for (int x = 0; x < WO; x++) {
                int32_t acc = bias ? bias[co] : 0;
                for (int ci = 0; ci < cin; ci++) {
                    const int8_t *plane = in + (g * cin + ci) * H * W;
                    for (int ky = 0; ky < KH; ky++) {
                        int iy = y + ky - PH;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < KW; kx++) {
                            int ix = x + kx - PW;
                            if (ix < 0 || ix >= W) continue;
                            uint32_t wi = (uint32_t)(((co * cin + ci) * KH + ky) * KW + kx);
                            acc += ((int32_t)plane[iy * W + ix] - zp_in) * dq_code(w, wi);
                        }
                    }
                }
                out[(co * HO + y) * WO + x] = dq_out(acc, w, co, zp_out, act_min);
            }
        }
    }
}

static inline void dq_dense(const int8_t *in, int8_t *out, int N, int M, const dq_tensor *w,
                            const int32_t *bias, int32_t zp_in, int32_t zp_out,
                            int32_t act_min) {
    for (int o = 0; o < M; o++) {
        int32_t acc = bias ? bias[o] : 0;
        for (int i = 0; i < N; i++)
            acc += ((int32_t)in[i] - zp_in) * dq_code(w, (uint32_t)(o * N + i));
        out[o] = dq_out(acc, w, o, zp_out, act_min);
    }
}

static inline void dq_maxpool(const int8_t *in, int8_t *out, int C, int H, int W, int KH, int KW) {
    int HO = H / KH, WO = W / KW;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < HO; y++)
            for (int x = 0; x < WO; x++) {
                int8_t m = -128;
                for (int ky = 0; ky < KH; ky++)
                    for (int kx = 0; kx < KW; kx++) {
                        int8_t v = in[(c * H + y * KH + ky) * W + x * KW + kx];
                        if (v > m) m = v;
                    }
                out[(c * HO + y) * WO + x] = m;
            }
}

/* The mean of each channel, rounded half away from zero, on the input's grid. */
static inline void dq_avgpool_all(const int8_t *in, int8_t *out, int C, int H, int W) {
    int32_t n = H * W;
    for (int c = 0; c < C; c++) {
        int32_t s = 0;
        for (int i = 0; i < n; i++) s += in[c * n + i];
        int32_t v = s > 0 ? (s + n / 2) / n : (s - n / 2) / n;
        if (v < -128) v = -128;
        if (v > 127) v = 127;
        out[c] = (int8_t)v;
    }
}
"""


def _ints(ctype: str, name: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in np.asarray(values).reshape(-1).tolist())
    return f"static const {ctype} {name}[{max(values.size, 1)}] = {{{body}}};"


def integer_c_source(decoded: Decoded, source: str = "") -> str:
    """The C file of a decoded integer model (see the module's docstring)."""
    integer, model = decoded.integer, decoded.model
    assert isinstance(integer, IntegerNet)
    spec = model.spec
    calls = [c for c in trace(model, spec) if not isinstance(c.module, (*ALIASING, nn.Sequential))]
    arena = activation_cost(model, spec, 1)["peak_ram_bytes"]
    entries = {e["name"]: e for e in decoded.tensors}
    arrays: list[str] = []
    names: list[str] = []
    body: list[str] = []
    cur, at_start = "in", None  # the input is the caller's buffer
    for call, op in zip(calls, integer.ops, strict=True):
        i, o = tuple(call.inputs[0].shape[1:]), tuple(call.output.shape[1:])
        dst = "a" if not at_start else f"a + {arena - math.prod(o)}"
        if isinstance(op, IntLayer):
            ident = "w_" + op.key.replace(".", "_")
            entry = entries[op.key]
            odd = entry.get("levels") == "odd"  # the odd code 2k + 1 packed as k
            codes = (op.codes.numpy() - 1) // 2 if odd else op.codes.numpy()
            arrays.append(f"static const uint8_t {ident}_p[] = {{"
                          f"{', '.join(str(b) for b in pack_bits(codes, op.bits))}}};")
            # A per-tensor scale gives every channel the same constants: kept once.
            per_channel = entry.get("scales") != "tensor"
            keep = slice(None) if per_channel else slice(0, 1)
            arrays.append(_ints("int32_t", ident + "_m", op.multiplier.numpy()[keep]))
            arrays.append(_ints("int8_t", ident + "_s", op.shift.numpy()[keep]))
            names += [ident + "_p", ident + "_m", ident + "_s"]
            bias = "0"
            if op.bias is not None:
                bias = ident + "_b"
                arrays.append(_ints("int32_t", bias, op.bias.numpy()))
                names.append(bias)
            arrays.append(f"static const dq_tensor {ident} = {{{op.bits}u, "
                          f"{int(per_channel)}u, {int(odd)}u, {ident}_p, {ident}_m, {ident}_s}};")
            q = f"{op.zp_in}, {op.zp_out}, {op.act_min}"
            if op.conv is not None:
                m = op.conv
                if tuple(m.stride) != (1, 1) or tuple(m.dilation) != (1, 1):
                    raise ExportError(f"{source}: {op.key}: C export takes stride-1 convs")
                body.append(f"    dq_conv2d({cur}, {dst}, {i[0]}, {i[1]}, {i[2]}, {o[0]}, "
                            f"{o[1]}, {o[2]}, {m.kernel_size[0]}, {m.kernel_size[1]}, "
                            f"{m.padding[0]}, {m.padding[1]}, {m.groups}, &{ident}, {bias}, {q});")
            else:
                body.append(f"    dq_dense({cur}, {dst}, {math.prod(i)}, {o[-1]}, &{ident}, "
                            f"{bias}, {q});")
        elif isinstance(op, IntPool) and op.kernel is not None:
            body.append(f"    dq_maxpool({cur}, {dst}, {i[0]}, {i[1]}, {i[2]}, {op.kernel[0]}, "
                        f"{op.kernel[1]});")
        else:
            body.append(f"    dq_avgpool_all({cur}, {dst}, {i[0]}, {i[1]}, {i[2]});")
        cur, at_start = dst, (True if at_start is None else not at_start)
    body.append(f"    for (int i = 0; i < {spec.num_classes}; i++) logits[i] = ({cur})[i];")
    flash = " + ".join(f"sizeof({n})" for n in names) or "0"
    qi, qo = integer.input, integer.output
    return "\n".join([
        f"/* distopt integer model {source.replace('*/', '* /')}: generated by distopt export "
        "--format c; do not edit.",
        f"   family {spec.family}, input {' x '.join(map(str, spec.in_shape))} int8 on the grid "
        f"real = {qi.scale!r} * (q - {qi.zero_point}) of the normalized input,",
        f"   {spec.num_classes} int8 logits on real = {qo.scale!r} * (q - {qo.zero_point}). */",
        INT_KERNELS, *arrays,
        f"static int8_t a[{arena}]; /* the activations: the largest input + output of a layer */",
        "", "void distopt_predict(const int8_t *in, int8_t *logits) {", *body, "}", "",
        f"uint32_t distopt_flash_bytes(void) {{ return (uint32_t)({flash}); }}",
        "uint32_t distopt_arena_bytes(void) { return (uint32_t)sizeof(a); }", ""])
