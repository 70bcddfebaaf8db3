"""The C kernels every exported C model carries (:mod:`distopt.c_source`): weights read in place
from their packed codes, float32 activations in one arena. Plain C99 and libm, no allocation,
no other dependency: what a microcontroller toolchain compiles as it is."""

from __future__ import annotations

import numpy as np

__all__ = ["KERNELS", "PACKED_BITS", "pack_bits"]


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``bits``-bit two's complement (or unsigned) values, LSB first across bytes: what
    ``dw_bits_at`` reads."""
    v = values.astype(np.int64).reshape(-1) & ((1 << bits) - 1)
    stream = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little").tobytes()


PACKED_BITS = r"""
#include <stdint.h>

/* Value i of a stream of `bits`-bit values packed LSB first across bytes. */
static inline uint32_t dw_bits_at(const uint8_t *p, uint32_t i, uint32_t bits) {
    uint32_t pos = i * bits, v = 0, got = 0;
    while (got < bits) {
        uint32_t byte = pos >> 3, off = pos & 7u, take = 8u - off;
        if (take > bits - got) take = bits - got;
        v |= (uint32_t)((p[byte] >> off) & ((1u << take) - 1u)) << got;
        got += take;
        pos += take;
    }
    return v;
}
"""

KERNELS = PACKED_BITS + r"""
#include <math.h>

/* One weight tensor as stored: float32 values, or integer codes of `bits` bits (two's
   complement, packed LSB first across bytes) times one float32 scale per output channel, or
   unsigned indices of `bits` bits into a float32 codebook; W_ODD: codes k stand for the odd
   integers 2k + 1 (levels without a zero). */
enum { W_FLOAT = 0, W_CODES = 1, W_CODEBOOK = 2, W_ODD = 3 };
typedef struct {
    int kind;
    uint32_t bits;
    uint32_t per_row; /* weights per scale: per output channel, or the tensor's */
    const uint8_t *packed;
    const float *values; /* W_FLOAT: the weights; W_CODEBOOK: the codebook */
    const float *scale;  /* W_CODES, W_ODD: one per output channel, or one */
} dw_tensor;

static inline float dw_weight(const dw_tensor *w, uint32_t i) {
    if (w->kind == W_FLOAT) return w->values[i];
    uint32_t v = dw_bits_at(w->packed, i, w->bits);
    if (w->kind == W_CODEBOOK) return w->values[v];
    int32_t code = (v & (1u << (w->bits - 1u))) ? (int32_t)(v | ~((1u << w->bits) - 1u))
                                                 : (int32_t)v;
    if (w->kind == W_ODD) code = 2 * code + 1;
    return (float)code * w->scale[i / w->per_row];
}

/* in: C x H x W, out: CO x HO x WO; kernel KH x KW, zero padding PH/PW, G groups. */
static inline void dw_conv2d(const float *in, float *out, int C, int H, int W, int CO, int HO, int WO,
                      int KH, int KW, int PH, int PW, int G, const dw_tensor *w,
                      const float *bias) {
    int cin = C / G, cog = CO / G;
    for (int co = 0; co < CO; co++) {
        int g = co / cog;
        for (int y = 0; y < HO; y++) {
            for (int x = 0; x < WO; x++) {
                float acc = bias ? bias[co] : 0.0f;
                for (int ci = 0; ci < cin; ci++) {
                    const float *plane = in + (g * cin + ci) * H * W;
                    for (int ky = 0; ky < KH; ky++) {
                        int iy = y + ky - PH;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < KW; kx++) {
                            int ix = x + kx - PW;
                            if (ix < 0 || ix >= W) continue;
                            uint32_t wi = (uint32_t)(((co * cin + ci) * KH + ky) * KW + kx);
                            acc += plane[iy * W + ix] * dw_weight(w, wi);
                        }
                    }
                }
                out[(co * HO + y) * WO + x] = acc;
            }
        }
    }
}

static inline void dw_dense(const float *in, float *out, int N, int M, const dw_tensor *w,
                     const float *bias) {
    for (int o = 0; o < M; o++) {
        float acc = bias ? bias[o] : 0.0f;
        for (int i = 0; i < N; i++) acc += in[i] * dw_weight(w, (uint32_t)(o * N + i));
        out[o] = acc;
    }
}

static inline void dw_relu(float *x, int n) {
    for (int i = 0; i < n; i++) if (x[i] < 0.0f) x[i] = 0.0f;
}

/* Max-pool with window = stride (PyTorch's MaxPool2d(k), floor mode). */
static inline void dw_maxpool(const float *in, float *out, int C, int H, int W, int KH, int KW) {
    int HO = H / KH, WO = W / KW;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < HO; y++)
            for (int x = 0; x < WO; x++) {
                float m = -INFINITY;
                for (int ky = 0; ky < KH; ky++)
                    for (int kx = 0; kx < KW; kx++) {
                        float v = in[(c * H + y * KH + ky) * W + x * KW + kx];
                        if (v > m) m = v;
                    }
                out[(c * HO + y) * WO + x] = m;
            }
}

static inline void dw_avgpool_all(const float *in, float *out, int C, int H, int W) {
    for (int c = 0; c < C; c++) {
        float s = 0.0f;
        for (int i = 0; i < H * W; i++) s += in[c * H * W + i];
        out[c] = s / (float)(H * W);
    }
}
"""
