"""Per-tensor codings of format versions 2 and 3: how one tensor's numbers become bytes in the
index, scales-and-biases and values sections, and back. A registry by coding id, in the manner
of gguf's type traits: format 3 writes the id first in every tensor's header entry; format 2
has no ids (its weights are integer codes, id 0, and its other tensors floats, id 2), so a
version-2 file reads through the same codings.

Every coding is four functions of its header fields (the entry without the id;
:mod:`distopt.compress.tensor_coding`): ``encode``,
``problem`` (why fields cannot be valid, before anything is read), ``sizes`` (the bytes it takes
in each section, so each section is decompressed to exactly what its tensors need) and
``decode``.

Sparse weights share one index coding (:mod:`distopt.compress.sparse_index`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from distopt.compress import codecs as K
from distopt.compress.coding import Codebook, Coding, IntCodes
from distopt.compress.quantization import ODD_BITS, WEIGHT_BITS, quantize_codes
from distopt.compress.sparse_index import (INDEX_BITMASK, INDEX_DENSE, INDEX_NAMES, INDEX_RICE,
                                           estimate, index_bytes, index_options, index_problem,
                                           read_index, read_symbols, symbols_bytes)
from distopt.compress.tensor_coding import (CODINGS, Coded, SectionReaders, TensorCoding,
                                            register_coding)

__all__ = ["CODINGS", "Coded", "CodebookCoding", "FloatCoding", "INDEX_BITMASK", "INDEX_DENSE",
           "INDEX_NAMES", "INDEX_RICE", "IntCoding", "IntOddCoding", "IntTensorCoding",
           "SectionReaders", "TensorCoding", "coding_class", "register_coding"]

MAX_CODEBOOK = 1 << 16  # shared values of one tensor


def _floats(a: np.ndarray) -> tuple[int, bytes]:
    """(bits, bytes) of float values as stored: float16 where every value is exact in it,
    else float32."""
    exact16 = bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))
    return (16, a.astype("<f2").tobytes()) if exact16 else (32, a.astype("<f4").tobytes())


def _smallest(options: list[tuple[int, list[int], bytes, Any]]) -> tuple[list[int], bytes, Any]:
    _, fields, index, keep = min(options, key=lambda o: o[0])
    return fields, index, keep


def _entry(name: str, shape: tuple[int, ...], bits: int, keep: np.ndarray | None, index: int
           ) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "bits": bits, "sparse": keep is not None,
            "index": INDEX_NAMES[index]}


# ------------------------------------------------------------------------------- the codings


@register_coding
class IntCoding(TensorCoding):
    """Fields ``[bits, scale_bits, index, stored, rice_k, unary_len]``. Quantized codes are
    ``[-qmax, qmax]`` integers times a per-row scale at 16, 8, 4, 3 or 2 bits (2 = ternary,
    non-zeros one sign bit), stored as unsigned symbols of the fewest bits; scales float16
    where exact, else float32; at 32 bits the float32 values themselves."""

    id, name, for_weights = 0, "int", True
    per_tensor = False  # one scale for the whole tensor (IntTensorCoding)

    @classmethod
    def encode(cls, a: np.ndarray, axis: int, coding: IntCodes) -> Coded:
        """Quantize (as training did) and pick the smallest index coding for one weight."""
        bits, flat = coding.bits, a.ravel()
        if bits == 32:
            sbits, scales, kept_of = 0, b"", flat
            nz = flat != 0
        else:
            q, scale = quantize_codes(torch.from_numpy(a), bits, axis, cls.per_tensor)
            q, scale = q.numpy().ravel(), scale.numpy()
            sbits, scales = _floats(scale)
            kept_of, nz = q, q != 0

        def values(keep: np.ndarray | None) -> np.ndarray | bytes:
            v = kept_of if keep is None else kept_of[keep]
            if bits == 32:
                return v.astype("<f4").tobytes()
            return K.to_symbols(v, bits, keep is not None)

        options = [(estimate(index, values(keep)),
                    [bits, sbits, idx, flat.size if keep is None else int(nz.sum()), k, ulen],
                    index, keep) for idx, index, keep, k, ulen in index_options(nz)]
        fields, index, keep = _smallest(options)
        v = values(keep)
        stored: list[tuple[np.ndarray, int]] | bytes = v if isinstance(v, bytes) else \
            [(v, K.symbol_width(bits, keep is not None))]
        return Coded(fields, index, scales, stored)

    @classmethod
    def problem(cls, fields: list[int], name: str, n: int, rows: int | None) -> str | None:
        if len(fields) != 6:
            return f"tensor {name!r}: entry {fields!r} needs 6 integers"
        bits, sbits, index, nnz, k, ulen = fields
        if bits not in WEIGHT_BITS:
            return f"tensor {name!r}: bits {bits} is not one of {WEIGHT_BITS}"
        if sbits not in ((0,) if bits == 32 else (16, 32)):
            return f"tensor {name!r}: scale bits {sbits} is not valid at {bits} bits"
        if cls.per_tensor and bits == 32:
            return f"tensor {name!r}: a per-tensor scale needs integer codes, not 32 bits"
        return index_problem(name, index, n, nnz, k, ulen)

    @classmethod
    def scale_count(cls, rows: int) -> int:
        return 1 if cls.per_tensor else rows

    @classmethod
    def sizes(cls, fields: list[int], n: int, rows: int | None, byte_layout: bool
              ) -> tuple[int, int, int]:
        bits, sbits, index, nnz, k, ulen = fields
        if bits == 32:
            return index_bytes(index, n, nnz, k, ulen), 0, 4 * nnz
        width = K.symbol_width(bits, index != INDEX_DENSE)
        return (index_bytes(index, n, nnz, k, ulen), cls.scale_count(rows or 0) * sbits // 8,
                symbols_bytes(nnz, width, byte_layout))

    @classmethod
    def decode(cls, fields: list[int], name: str, shape: tuple[int, ...], axis: int,
               readers: SectionReaders) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None,
                                                 dict[str, Any]]:
        bits, sbits, index, nnz, k, ulen = fields
        n, what = math.prod(shape), f"tensor {name!r}"
        keep = read_index(readers.index, index, n, nnz, k, ulen, what)
        entry = _entry(name, shape, bits, keep, index)
        if bits == 32:
            kept = np.frombuffer(readers.values.take(4 * nnz, what), "<f4")
            flat = np.zeros(n, np.float32)
            flat[slice(None) if keep is None else keep] = kept
            return flat.reshape(shape), None, entry
        rows = shape[axis]
        scale = np.frombuffer(readers.scales.take(cls.scale_count(rows) * sbits // 8, what),
                              "<f2" if sbits == 16 else "<f4").astype(np.float32)
        scale = np.broadcast_to(scale, (rows,))  # per tensor: every row the one scale
        width = K.symbol_width(bits, keep is not None)
        sym = read_symbols(readers.values, nnz, width, readers.byte_layout, what)
        q = np.zeros(n, np.float32)
        q[slice(None) if keep is None else keep] = K.from_symbols(sym, bits, keep is not None)
        q = q.reshape(shape)
        with np.errstate(over="ignore", invalid="ignore"):  # crafted scales
            if axis == 1:
                values = q * scale[None, :]
            else:
                values = (q.reshape(rows, -1) * scale[:, None]).reshape(shape)
        entry["scale_bits"] = sbits
        if axis == 1:
            entry["axis"] = 1
        if cls.per_tensor:
            entry["scales"] = "tensor"
        return values.astype(np.float32), (q.astype(np.int32), scale.copy()), entry


@register_coding
class IntTensorCoding(IntCoding):
    """The integer coding with one scale for the whole tensor (``IntCodes(per_tensor=True)``):
    the same fields; the scales section holds one value, which every row takes."""

    id, name = 3, "int_tensor"
    per_tensor = True


@register_coding
class CodebookCoding(TensorCoding):
    """Fields ``[size, value_bits, index, stored, rice_k, unary_len]``: weight sharing (Deep
    Compression's clustering). The tensor's distinct stored values, ``size`` of them, are kept
    once (float16 where exact, else float32) in the scales section, and every stored weight is
    the index of its value at ``ceil(log2(size))`` bits (at least 1) in the values section."""

    id, name, for_weights = 1, "codebook", True

    @staticmethod
    def width(size: int) -> int:
        return max(1, (size - 1).bit_length())

    @classmethod
    def encode(cls, a: np.ndarray, axis: int, coding: Codebook) -> Coded:
        flat = a.ravel().astype(np.float32)
        nz = flat != 0
        options = []
        for idx, index, keep, k, ulen in index_options(nz):
            stored = flat if keep is None else flat[keep]
            table, sym = np.unique(stored, return_inverse=True)
            if len(table) > coding.size:
                raise ValueError(f"a codebook of {coding.size} values cannot hold a tensor of "
                                 f"{len(table)} distinct values (cluster it first)")
            vbits, table_bytes = _floats(table)
            fields = [len(table), vbits, idx, int(stored.size), k, ulen]
            options.append((estimate(index, sym, len(table_bytes)), fields, index,
                            (keep, table_bytes, sym.astype(np.int64))))
        fields, index, (keep, table_bytes, sym) = _smallest(options)
        return Coded(fields, index, table_bytes, [(sym, cls.width(fields[0]))])

    @classmethod
    def problem(cls, fields: list[int], name: str, n: int, rows: int | None) -> str | None:
        if len(fields) != 6:
            return f"tensor {name!r}: entry {fields!r} needs 6 integers"
        size, vbits, index, nnz, k, ulen = fields
        if not (0 <= size <= min(MAX_CODEBOOK, max(nnz, 0))) or (nnz > 0 and size < 1):
            return f"tensor {name!r}: a codebook of {size} values for {nnz} stored weights"
        if vbits not in (16, 32):
            return f"tensor {name!r}: codebook value bits {vbits} is not 16 or 32"
        return index_problem(name, index, n, nnz, k, ulen)

    @classmethod
    def sizes(cls, fields: list[int], n: int, rows: int | None, byte_layout: bool
              ) -> tuple[int, int, int]:
        size, vbits, index, nnz, k, ulen = fields
        return (index_bytes(index, n, nnz, k, ulen), size * vbits // 8,
                symbols_bytes(nnz, cls.width(size), byte_layout))

    @classmethod
    def decode(cls, fields: list[int], name: str, shape: tuple[int, ...], axis: int,
               readers: SectionReaders) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None,
                                                 dict[str, Any]]:
        size, vbits, index, nnz, k, ulen = fields
        n, what = math.prod(shape), f"tensor {name!r}"
        keep = read_index(readers.index, index, n, nnz, k, ulen, what)
        table = np.frombuffer(readers.scales.take(size * vbits // 8, what),
                              "<f2" if vbits == 16 else "<f4").astype(np.float32)
        sym = read_symbols(readers.values, nnz, cls.width(size), readers.byte_layout, what)
        if nnz and int(sym.max()) >= size:
            raise K.CodingError(f"a codebook index {int(sym.max())} is beyond its {size} values")
        flat = np.zeros(n, np.float32)
        flat[slice(None) if keep is None else keep] = table[sym]
        entry = _entry(name, shape, cls.width(size), keep, index)
        entry.update(coding=cls.name, codebook_size=size, scale_bits=vbits)
        return flat.reshape(shape), None, entry


@register_coding
class FloatCoding(TensorCoding):
    """Fields ``[bits]``: a float tensor (biases) as float16 or float32."""

    id, name, for_weights = 2, "float", False

    @classmethod
    def encode(cls, a: np.ndarray, axis: int, coding: int) -> Coded:
        """``coding``: 16 (beside quantized weights; float32 where float16 would overflow) or
        32."""
        half = a.astype(np.float16)
        use16 = coding == 16 and bool(np.isfinite(half).all())
        return Coded([16 if use16 else 32],
                     scales=half.astype("<f2").tobytes() if use16 else a.astype("<f4").tobytes())

    @classmethod
    def problem(cls, fields: list[int], name: str, n: int, rows: int | None) -> str | None:
        return None if fields in ([16], [32]) else \
            f"tensor {name!r}: entry {fields!r}, expected [16] or [32] (float bits)"

    @classmethod
    def sizes(cls, fields: list[int], n: int, rows: int | None, byte_layout: bool
              ) -> tuple[int, int, int]:
        return 0, n * fields[0] // 8, 0

    @classmethod
    def decode(cls, fields: list[int], name: str, shape: tuple[int, ...], axis: int,
               readers: SectionReaders) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None,
                                                 dict[str, Any]]:
        n, what = math.prod(shape), f"tensor {name!r}"
        a = np.frombuffer(readers.scales.take(n * fields[0] // 8, what),
                          "<f2" if fields[0] == 16 else "<f4").astype(np.float32)
        return a.reshape(shape), None, {"name": name, "shape": list(shape),
                                        "bits": 32, "sparse": False, "float_bits": fields[0]}


_BY_KIND: dict[type, type[TensorCoding]] = {IntCodes: IntCoding, Codebook: CodebookCoding}


@register_coding
class IntOddCoding(TensorCoding):
    """Fields ``[bits, scale_bits, per_tensor]``: odd integer codes ``-(2**bits - 1) ..
    2**bits - 1`` (``IntCodes(odd=True)``, 4 bits or fewer) times a scale per row, or one for
    the tensor (``per_tensor`` 1). No code is zero, so there is no index: every value is a
    ``bits``-bit symbol ``(code + 2**bits - 1) / 2``."""

    id, name, for_weights = 4, "int_odd", True

    @classmethod
    def encode(cls, a: np.ndarray, axis: int, coding: IntCodes) -> Coded:
        q, scale = quantize_codes(torch.from_numpy(a), coding.bits, axis, coding.per_tensor,
                                  odd=True)
        scale = scale.numpy()
        sbits, scale_bytes = _floats(scale)
        symbols = (q.numpy().ravel().astype(np.int64) + 2 ** coding.bits - 1) // 2
        return Coded([coding.bits, sbits, int(coding.per_tensor)], scales=scale_bytes,
                     values=[(symbols, coding.bits)])

    @classmethod
    def problem(cls, fields: list[int], name: str, n: int, rows: int | None) -> str | None:
        if len(fields) != 3:
            return f"tensor {name!r}: entry {fields!r} needs 3 integers"
        bits, sbits, per_tensor = fields
        if bits not in ODD_BITS or sbits not in (16, 32) or per_tensor not in (0, 1):
            return f"tensor {name!r}: odd-level entry {fields!r} is not [bits in " \
                f"{ODD_BITS}, scale bits 16 or 32, per_tensor 0 or 1]"
        return None

    @classmethod
    def sizes(cls, fields: list[int], n: int, rows: int | None, byte_layout: bool
              ) -> tuple[int, int, int]:
        bits, sbits, per_tensor = fields
        return 0, (1 if per_tensor else rows or 0) * sbits // 8, \
            symbols_bytes(n, bits, byte_layout)

    @classmethod
    def decode(cls, fields: list[int], name: str, shape: tuple[int, ...], axis: int,
               readers: SectionReaders) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None,
                                                 dict[str, Any]]:
        bits, sbits, per_tensor = fields
        n, what, rows = math.prod(shape), f"tensor {name!r}", shape[axis]
        scale = np.frombuffer(readers.scales.take((1 if per_tensor else rows) * sbits // 8, what),
                              "<f2" if sbits == 16 else "<f4").astype(np.float32)
        scale = np.broadcast_to(scale, (rows,)).copy()
        sym = read_symbols(readers.values, n, bits, readers.byte_layout, what)
        if n and int(sym.max()) >= 2 ** bits:
            raise K.CodingError(f"a {bits}-bit symbol is out of range")
        q = (2 * sym - (2 ** bits - 1)).reshape(shape).astype(np.int32)
        shaped = scale[None, :] if axis == 1 else scale.reshape(rows, *[1] * (len(shape) - 1))
        with np.errstate(over="ignore", invalid="ignore"):  # crafted scales
            values = (q * shaped).astype(np.float32)
        entry = _entry(name, shape, bits, None, INDEX_DENSE)
        entry.update(scale_bits=sbits, levels="odd")
        if axis == 1:
            entry["axis"] = 1
        if per_tensor:
            entry["scales"] = "tensor"
        return values, (q, scale), entry


def coding_class(coding: Coding) -> type[TensorCoding]:
    """The file coding of a method's per-tensor coding (:mod:`distopt.compress.coding`)."""
    if isinstance(coding, IntCodes) and coding.odd:
        return IntOddCoding
    if isinstance(coding, IntCodes) and coding.per_tensor and coding.bits < 32:
        return IntTensorCoding
    try:
        return _BY_KIND[type(coding)]
    except KeyError:
        raise ValueError(f"no file coding for {coding!r}") from None
