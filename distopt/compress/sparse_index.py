"""The sparse index of format versions 2 and 3: where a weight's stored values are, shared by
every weight coding (:mod:`distopt.compress.codings`). Chosen per tensor by whichever is
smallest: none (``dense``: zeros are stored as values), a bitmask, or Golomb-Rice coded gaps
between stored positions (low bits and unary quotients as two streams); and the values
section's symbols, bit-packed or one a byte."""

from __future__ import annotations

import zlib

import numpy as np

from distopt.compress import codecs as K
from distopt.compress.wrapper import Reader

__all__ = ["INDEX_BITMASK", "INDEX_DENSE", "INDEX_NAMES", "INDEX_RICE", "estimate",
           "index_bytes", "index_options", "index_problem", "read_index", "read_symbols",
           "symbols_bytes"]

INDEX_DENSE, INDEX_BITMASK, INDEX_RICE = 0, 1, 2
INDEX_NAMES = {INDEX_DENSE: "dense", INDEX_BITMASK: "bitmask", INDEX_RICE: "rice"}


def estimate(index: bytes, values: np.ndarray | bytes, extra: int = 0) -> int:
    """A cheap stand-in for a coding's compressed bytes, to choose the index per tensor."""
    vb = values if isinstance(values, bytes) else values.astype(np.uint8 if values.size == 0 or
                                                                values.max() < 256 else "<u2"
                                                                ).tobytes()
    return len(zlib.compress(index, 9)) + len(zlib.compress(vb, 9)) + extra


def index_options(nz: np.ndarray) -> list[tuple[int, bytes, np.ndarray | None, int, int]]:
    """Every index coding of the stored positions ``nz``: (index id, bytes, kept positions or
    None for dense, Rice parameter, unary length)."""
    options: list[tuple[int, bytes, np.ndarray | None, int, int]] = [(INDEX_DENSE, b"", None, 0, 0)]
    if int(nz.sum()) < nz.size:
        options.append((INDEX_BITMASK, np.packbits(nz).tobytes(), nz, 0, 0))
        gaps = K.gaps_of(nz)
        k = K.best_rice_k(gaps)
        low, unary = K.rice_encode(gaps, k)
        options.append((INDEX_RICE, low + unary, nz, k, len(unary)))
    return options


def index_problem(name: str, index: int, n: int, nnz: int, k: int, ulen: int) -> str | None:
    if index not in INDEX_NAMES:
        return f"tensor {name!r}: unknown index coding {index}"
    if not 0 <= nnz <= n or (index == INDEX_DENSE and nnz != n):
        return f"tensor {name!r}: {nnz} stored values of {n}"
    if index == INDEX_RICE:
        if not (0 <= k <= K.MAX_RICE_K and 0 <= ulen <= (n + 7) // 8):
            return f"tensor {name!r}: Rice parameter {k} or unary length {ulen} out of range"
    elif k or ulen:
        return f"tensor {name!r}: Rice fields set without Rice coding"
    return None


def index_bytes(index: int, n: int, nnz: int, k: int, ulen: int) -> int:
    return {INDEX_DENSE: 0, INDEX_BITMASK: (n + 7) // 8,
            INDEX_RICE: K.packed_len(nnz, k) + ulen}[index]


def read_index(reader: Reader, index: int, n: int, nnz: int, k: int, ulen: int, what: str
                ) -> np.ndarray | None:
    """The stored positions (a bool mask), or None for a dense tensor."""
    if index == INDEX_DENSE:
        return None
    if index == INDEX_BITMASK:
        mask = np.unpackbits(np.frombuffer(reader.take((n + 7) // 8, what), np.uint8))
        keep = mask[:n].astype(bool)
        if int(keep.sum()) != nnz:
            raise K.CodingError(f"its bitmask marks {int(keep.sum())} values, not {nnz}")
        return keep
    low = reader.take(K.packed_len(nnz, k), what)
    pos = K.positions_of(K.rice_decode(low, reader.take(ulen, what), nnz, k))
    if nnz and pos[-1] >= n:
        raise K.CodingError(f"a position {int(pos[-1])} is beyond its {n} values")
    keep = np.zeros(n, bool)
    keep[pos] = True
    return keep


def symbols_bytes(nnz: int, width: int, byte_layout: bool) -> int:
    return nnz if byte_layout and width < 8 else K.packed_len(nnz, width)


def read_symbols(reader: Reader, nnz: int, width: int, byte_layout: bool, what: str
                  ) -> np.ndarray:
    if byte_layout and width < 8:
        return np.frombuffer(reader.take(nnz, what), np.uint8).astype(np.int64)
    return K.unpack_uint(reader.take(K.packed_len(nnz, width), what), nnz, width)
