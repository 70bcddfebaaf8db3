"""Bit-level codings of the ``.dopt`` format v2, in numpy: fixed-width integer packing, the
mapping of quantization codes to unsigned symbols, Golomb-Rice coding of the gaps between
non-zero positions, and varints. Pure functions; every one has an inverse that the property
tests round-trip. No model, Ray or torch here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CodingError", "pack_uint", "unpack_uint", "symbol_width", "to_symbols",
           "from_symbols", "gaps_of", "positions_of", "rice_encode", "rice_decode", "best_rice_k",
           "rice_bytes", "varint", "read_varint"]

MAX_RICE_K = 30


class CodingError(ValueError):
    """Coded data that cannot be decoded (too short, out of range)."""


def pack_uint(u: np.ndarray, width: int) -> bytes:
    """Unsigned integers ``< 2**width`` as a big-endian bit stream, ``width`` bits each,
    zero-padded to whole bytes. Widths 8 and 16 are plain (little-endian) bytes."""
    u = np.asarray(u, np.int64).ravel()
    if width == 8:
        return u.astype(np.uint8).tobytes()
    if width == 16:
        return u.astype("<u2").tobytes()
    bits = (u[:, None] >> np.arange(width - 1, -1, -1, dtype=np.int64)) & 1
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


def packed_len(n: int, width: int) -> int:
    """Bytes that :func:`pack_uint` writes for ``n`` values of ``width`` bits."""
    return (n * width + 7) // 8


def unpack_uint(buf: bytes | memoryview, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``n`` values of ``width`` bits (int64)."""
    if width == 8:
        return np.frombuffer(buf, np.uint8, n).astype(np.int64)
    if width == 16:
        return np.frombuffer(buf, "<u2", n).astype(np.int64)
    bits = np.unpackbits(np.frombuffer(buf, np.uint8, packed_len(n, width)))[:n * width]
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
    return bits.reshape(n, width).astype(np.int64) @ weights


def symbol_width(bits: int, sparse: bool) -> int:
    """Bits per stored value for ``bits``-bit codes in ``[-qmax, qmax]``; a sparse tensor stores
    no zeros, so its codes take one symbol fewer (2-bit, i.e. ternary, non-zeros are signs: one
    bit each)."""
    qmax = 2 ** (bits - 1) - 1
    symbols = 2 * qmax if sparse else 2 * qmax + 1
    return 8 if bits == 8 else 16 if bits == 16 else max(1, int(symbols - 1).bit_length())


def to_symbols(codes: np.ndarray, bits: int, sparse: bool) -> np.ndarray:
    """Codes as unsigned symbols: ``code + qmax``; without the zero when ``sparse``."""
    qmax = 2 ** (bits - 1) - 1
    c = np.asarray(codes, np.int64)
    if not sparse:
        return c + qmax
    return np.where(c < 0, c + qmax, c + qmax - 1)


def from_symbols(u: np.ndarray, bits: int, sparse: bool) -> np.ndarray:
    """Inverse of :func:`to_symbols`; symbols out of range raise :class:`CodingError`."""
    qmax = 2 ** (bits - 1) - 1
    top = 2 * qmax - 1 if sparse else 2 * qmax
    if u.size and (int(u.max()) > top or int(u.min()) < 0):
        raise CodingError(f"a {bits}-bit symbol is out of range")
    if not sparse:
        return u - qmax
    return np.where(u < qmax, u - qmax, u - qmax + 1)


def gaps_of(mask: np.ndarray) -> np.ndarray:
    """Run lengths of zeros before each non-zero position of a flat boolean mask."""
    pos = np.flatnonzero(mask)
    return np.diff(pos, prepend=-1) - 1


def positions_of(gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`gaps_of`: the non-zero positions."""
    return np.cumsum(np.asarray(gaps, np.int64) + 1) - 1


def rice_bytes(gaps: np.ndarray, k: int) -> int:
    """Length of :func:`rice_encode`'s output for parameter ``k``."""
    return packed_len(len(gaps), k) + packed_len(int(np.sum(gaps >> k)) + len(gaps), 1)


def best_rice_k(gaps: np.ndarray) -> int:
    """The Rice parameter with the fewest bytes for these gaps."""
    top = max(1, int(gaps.max()).bit_length()) if len(gaps) else 1
    return min(range(0, min(top, MAX_RICE_K) + 1), key=lambda k: rice_bytes(gaps, k))


def rice_encode(gaps: np.ndarray, k: int) -> tuple[bytes, bytes]:
    """Golomb-Rice code with divisor ``2**k``, in two streams: the ``k`` low bits of every gap
    (fixed width), and the quotients in unary (``q`` ones then a zero each). Kept apart so that
    decoding is vectorized: the zeros of the unary stream end the quotients."""
    g = np.asarray(gaps, np.int64)
    low = pack_uint(g & ((1 << k) - 1), k) if k else b""
    q = g >> k
    stream = np.ones(int(q.sum()) + len(q), np.uint8)
    stream[np.cumsum(q + 1) - 1] = 0
    return low, np.packbits(stream).tobytes()


def rice_decode(low: bytes | memoryview, unary: bytes | memoryview, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`rice_encode` for ``n`` gaps."""
    bits = np.unpackbits(np.frombuffer(unary, np.uint8))
    ends = np.flatnonzero(bits == 0)[:n]
    if len(ends) < n:
        raise CodingError(f"the unary stream ends after {len(ends)} of {n} gaps")
    q = np.diff(ends, prepend=-1) - 1
    r = unpack_uint(low, n, k) if k else np.zeros(n, np.int64)
    return (q << k) | r


def varint(n: int) -> bytes:
    """LEB128 unsigned varint."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """``(value, next position)``; at most 8 bytes (56 bits)."""
    value = shift = 0
    for i in range(8):
        if pos + i >= len(buf):
            raise CodingError("a varint runs past the end")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise CodingError("a varint is longer than 8 bytes")
