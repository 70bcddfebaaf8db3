"""The ``.dopt`` artifact, whose length is the model size.

The artifact is what a user deploys and what every reported compressed accuracy is measured on:
``decode(encode(model))`` is evaluated, never the in-memory model.

Wrapper (little-endian), both versions::

    b"DOPT" | version u16 | codec u8 | reserved u8 | body_len u32 | body | crc32 u32

The CRC covers everything before it, so truncated or altered files are rejected.

**Version 2** (written by default). The body is four sections, each ``codec u8 | raw_len varint
| stored_len varint | stored bytes`` and each compressed on its own by whichever codec is
smallest for it (none, LZMA, LZMA without literal context, zlib), so every byte of the file
belongs to one part of the byte breakdown (:func:`byte_breakdown`):

1. *header*: compact JSON of the model spec (non-default keys only), the meta, and one short
   entry per tensor in ``state_dict`` order (names and shapes follow from the spec):
   ``[bits, scale_bits, index, nnz, rice_k, unary_len]`` for weights, ``[float_bits]`` for the
   rest (biases);
2. *index*: where each weight's non-zero codes are, by whichever is smallest for that tensor:
   none (dense: zeros are stored as values), a bitmask, or Golomb-Rice coded gaps between
   non-zero positions (low bits and unary quotients as two streams);
3. *scales and biases*: each quantized weight's per-row scales (float16 where exact, else
   float32), then the float tensors (float16 beside quantized weights, else float32);
4. *values*: each weight's stored codes as unsigned symbols of the fewest bits (ternary
   non-zeros are one sign bit), bit-packed or one per byte (bit 4 of the section's codec byte),
   or float32 for 32-bit weights.

Quantized codes are ``[-qmax, qmax]`` integers times a per-row scale at 16, 8, 4, 3 or 2 bits
(2 = ternary); :func:`distopt.compress.quantization.quantize_codes` computes them for the codec
and for quantization-aware training alike.

**Version 1** (still decoded; ``encode(..., version=1)`` writes it for comparisons): one
compressed body of ``header_len u32 | JSON header (names, shapes, bits, sparsity) | payloads``,
each weight a bitmask if sparse, float32 scales, then its non-zero values as float32, int16,
int8 or two 4-bit values per byte; float32 biases.
"""

from __future__ import annotations

import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from distopt import metrics as M
from distopt.compress import codecs as K
from distopt.compress.quantization import (WEIGHT_BITS, float_bits, quantize_codes,
                                           quantize_per_channel)
from distopt.models import (BLOCKS, GATES, Model, ModelSpec, build_model, conv_out_side,
                            prunable_weights)

__all__ = ["ArtifactError", "Decoded", "byte_breakdown", "decode", "encode", "size_report"]

MAGIC = b"DOPT"
VERSION = 2  # what encode writes
VERSIONS = (1, 2)  # what decode reads
_PREAMBLE = struct.Struct("<4sHBBI")
_CODECS = {1: "lzma", 2: "zlib"}
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


class ArtifactError(ValueError):
    """The file is not a valid distopt artifact (wrong magic, version, length or checksum)."""


def _unpack(buf: memoryview, n: int, bits: int) -> tuple[np.ndarray, int]:
    if bits == 16:
        return np.frombuffer(buf, "<i2", n).astype(np.int32), 2 * n
    if bits == 8:
        return np.frombuffer(buf, np.int8, n).astype(np.int32), n
    nbytes = (n + 1) // 2
    b = np.frombuffer(buf, np.uint8, nbytes)
    u = np.empty(2 * nbytes, np.int32)
    u[0::2], u[1::2] = b & 0x0F, b >> 4
    return u[:n] - 8, nbytes


def _pack(q: np.ndarray, bits: int) -> bytes:
    if bits == 16:
        return q.astype("<i2").tobytes()
    if bits == 8:
        return q.astype(np.int8).tobytes()
    u = (q + 8).astype(np.uint8)  # 4 bits: offset to 1..15, two per byte
    if len(u) % 2:
        u = np.append(u, np.uint8(8))
    return (u[0::2] | (u[1::2] << 4)).tobytes()


def encode(model: Model, bits: int, meta: dict[str, Any] | None = None,
           weight_bits: Mapping[str, int] | None = None, version: int = VERSION) -> bytes:
    """Serialize a (pruned) model: per-channel quantized weights, where they are non-zero.

    Zero weights (pruned, or rounded to zero) are not stored when an index is smaller than
    storing them; ``bits`` 32 keeps float32 values. ``weight_bits`` gives single weights (by
    parameter name) their own bits: mixed widths, recorded per tensor. ``version`` 1 writes the
    old format (no 3- or 2-bit weights there), for comparisons."""
    weight_bits = dict(weight_bits or {})
    allowed = WEIGHT_BITS if version == 2 else (32, 16, 8, 4)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, but got {version!r}")
    for b in (bits, *weight_bits.values()):
        if b not in allowed:
            raise ValueError(f"bits must be one of {', '.join(map(str, allowed))} (format "
                             f"version {version}), but got {b!r}")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMS:
        raise ValueError(f"the model has {n_params:,} parameters; the artifact holds at most "
                         f"{MAX_PARAMS:,} (distopt.compress.MAX_PARAMS)")
    if getattr(model.spec, "batch_norm", False):
        raise ValueError("fold BatchNorm into the convs first (distopt.models.fold_batch_norm): "
                         "the artifact stores only what its decoder rebuilds")
    axes = {n: axis for n, _, axis in prunable_weights(model)}
    if version == 2:
        return _encode_v2(model, bits, meta or {}, weight_bits, axes)
    tensors, chunks = [], []
    for name, t in model.state_dict().items():
        a = t.detach().float().contiguous().cpu().numpy()
        is_weight = name in axes
        b = weight_bits.get(name, bits) if is_weight else 32
        nz = a != 0
        sparse = is_weight and bool((~nz).any())
        entry: dict[str, Any] = {"name": name, "shape": list(a.shape), "bits": b,
                                 "sparse": sparse}
        if sparse:
            chunks.append(np.packbits(nz.ravel()).tobytes())
        if b == 32:
            chunks.append((a[nz] if sparse else a.ravel()).astype("<f4").tobytes())
        elif axes[name] == 1:  # one scale per column (embeddings)
            entry["axis"] = 1
            qt, scale = quantize_per_channel(np.ascontiguousarray(a.T), b)
            chunks.append(scale.astype("<f4").tobytes())
            q = np.ascontiguousarray(qt.T)
            chunks.append(_pack((q[nz] if sparse else q.ravel()), b))
        else:
            q, scale = quantize_per_channel(a, b)
            chunks.append(scale.astype("<f4").tobytes())
            chunks.append(_pack((q[nz] if sparse else q.ravel()), b))
        tensors.append(entry)
    header = json.dumps({"spec": model.spec.to_dict(), "tensors": tensors, "meta": meta or {}},
                        separators=(",", ":")).encode()
    raw = struct.pack("<I", len(header)) + header + b"".join(chunks)
    # Keep whichever codec is smaller for this model: lzma usually, zlib on tiny ones.
    candidates = {1: lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS),
                  2: zlib.compress(raw, 9)}
    codec = min(candidates, key=lambda c: len(candidates[c]))
    body = candidates[codec]
    return _wrap(1, codec, body)


def _wrap(version: int, codec: int, body: bytes) -> bytes:
    head = _PREAMBLE.pack(MAGIC, version, codec, 0, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


@dataclass(frozen=True)
class Decoded:
    """A decoded artifact: the model (weights = codes x scales, exactly as stored), the file's
    meta and tensor entries, and, for every quantized weight, its integer codes (the tensor's
    shape) and float32 scales (one per row, or per column for ``axis`` 1), which exporters
    need to write the same numbers in another format."""

    model: Model
    meta: dict[str, Any]
    tensors: list[dict[str, Any]]
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


# Bounds of what a file may ask the decoder to build. Every model distopt encodes is within
# them (``encode`` refuses bigger ones), so every file it writes can be read back.
MAX_PARAMS = 1 << 25  # 33.5 M parameters: 134 MB as float32
MAX_HEADER_BYTES = 1 << 20
MAX_LAYERS = 64
MAX_DIM = 1 << 16  # any single width, channel count, input side, class or vocabulary count


def _spec_problem(d: Any) -> str | None:
    """Why a header's spec cannot be a model this decoder builds, or None. Runs before anything
    is built, so that a crafted spec never allocates memory."""
    if not isinstance(d, dict):
        return "spec is not an object"
    for key, allowed, default in (("family", ("cnn", "conv1d", "mlp", "rnn"), None),
                                  ("cell", tuple(GATES), "rnn"),
                                  ("head", ("flatten", "gap"), "flatten"),
                                  ("block", BLOCKS, "plain")):
        v = d.get(key, default)
        if not isinstance(v, str) or v not in allowed:
            name = {"family": "model family", "cell": "recurrent cell", "head": "head",
                    "block": "conv block"}[key]
            return f"unknown {name} {v!r}"
    if d.get("batch_norm", False) is not False:
        return "spec.batch_norm must be false (BatchNorm is folded before export)"
    missing = [k for k in ("in_shape", "num_classes", "conv_channels", "dense_units",
                           "kernel_size", "dropout") if k not in d]
    if missing:
        return f"spec lacks {missing}"
    lists = {k: d.get(k, []) for k in ("in_shape", "conv_channels", "dense_units", "rnn_units")}
    for key, v in lists.items():
        if not isinstance(v, list) or len(v) > MAX_LAYERS or \
                not all(type(x) is int and 1 <= x <= MAX_DIM for x in v):
            return f"spec.{key} must be a list of at most {MAX_LAYERS} integers in [1, {MAX_DIM}]"
    for key in ("num_classes", "kernel_size"):
        if not (type(d.get(key)) is int and 1 <= d[key] <= MAX_DIM):
            return f"spec.{key} must be an integer in [1, {MAX_DIM}]"
    for key in ("vocab_size", "embed_dim"):
        if not (type(d.get(key, 0)) is int and 0 <= d.get(key, 0) <= 1 << 24):
            return f"spec.{key} must be an integer in [0, {1 << 24}]"
    if not (isinstance(d.get("dropout"), (int, float)) and 0 <= d["dropout"] < 1):
        return "spec.dropout must be in [0, 1)"
    tokens = d.get("vocab_size", 0) > 0
    if len(lists["in_shape"]) != (1 if d["family"] == "rnn" and tokens else 3):
        return f"spec.in_shape {lists['in_shape']} does not fit family {d['family']!r}"
    if tokens and not d.get("embed_dim"):
        return "spec.embed_dim must be >= 1 with a vocabulary"
    if d["family"] == "conv1d" and lists["in_shape"][1] != 1:
        return f"spec.in_shape {lists['in_shape']}: a conv1d model takes (C, 1, L)"
    if d["family"] in ("cnn", "conv1d") and lists["conv_channels"]:
        h, w = lists["in_shape"][1:]
        kh = 1 if d["family"] == "conv1d" else d["kernel_size"]
        ph = 1 if d["family"] == "conv1d" else 2
        h, w = conv_out_side(h, w, len(lists["conv_channels"]), (kh, d["kernel_size"]), (ph, 2),
                             d.get("block", "plain"))
        if min(h, w) < 1:
            return "spec's convolutions shrink the input to nothing"
    if d["family"] == "rnn" and not lists["rnn_units"]:
        return "spec.rnn_units is empty"
    return None


def _expected_state(spec: ModelSpec) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Parameter names and shapes of the spec's model, and its quantizable weights with their
    axes, from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(spec)
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()},
            {n: axis for n, _, axis in prunable_weights(model)})


def _tensor_problem(e: Any, expected: dict[str, tuple[int, ...]], weights: dict[str, int]
                    ) -> str | None:
    if not isinstance(e, dict) or not isinstance(e.get("name"), str):
        return "a tensor entry has no name"
    name = e["name"]
    if name not in expected:
        return f"tensor {name!r} is not a parameter of the spec's model"
    if not isinstance(e.get("shape"), list) or tuple(e["shape"]) != expected[name]:
        return f"tensor {name!r} has shape {e.get('shape')!r}; the spec's model has " \
               f"{list(expected[name])}"
    if e.get("bits") not in (32, 16, 8, 4) or (e["bits"] != 32 and name not in weights):
        return f"tensor {name!r}: bits {e.get('bits')!r} is not valid for it"
    if not isinstance(e.get("sparse"), bool) or (e["sparse"] and name not in weights):
        return f"tensor {name!r}: sparse {e.get('sparse')!r} is not valid for it"
    if e["bits"] != 32 and e.get("axis", 0) != weights[name]:
        return f"tensor {name!r}: quantization axis {e.get('axis')!r}, expected {weights[name]}"
    return None


def _payload_bound(tensors: list[dict[str, Any]]) -> int:
    """The most payload bytes the tensors can need (every weight non-zero)."""
    total = 0
    for e in tensors:
        n = math.prod(e["shape"])
        total += (n + 7) // 8 if e["sparse"] else 0
        if e["bits"] != 32:
            total += 4 * e["shape"][e.get("axis", 0)]
        total += {32: 4 * n, 16: 2 * n, 8: n, 4: (n + 1) // 2}[e["bits"]]
    return total


def _inflate(body: bytes, codec: int, limit: int, source: str, zdict: bytes = b"") -> bytes:
    """Decompress at most ``limit`` bytes; a body that holds more is rejected, not expanded.
    ``zdict``: zlib's preset dictionary (format v2's header section)."""
    try:
        if codec == 1:
            # No match can reach further back than the output we accept, so a dictionary of
            # that size decodes every valid body (the encoder's preset holds 64 MB).
            dict_size = min(max(limit + 1, 4096), 64 << 20)
            filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
            out = lzma.LZMADecompressor(format=lzma.FORMAT_RAW,
                                        filters=filters).decompress(body, limit + 1)
        else:
            d = zlib.decompressobj(zdict=zdict) if zdict else zlib.decompressobj()
            out = d.decompress(body, limit + 1)
    except (lzma.LZMAError, zlib.error) as e:
        raise ArtifactError(f"{source}: body cannot be decompressed ({e})") from None
    return out


class _Reader:
    """Bounds-checked reads from the decompressed payload."""

    def __init__(self, buf: memoryview, source: str) -> None:
        self.buf, self.pos, self.source = buf, 0, source

    def take(self, nbytes: int, what: str) -> memoryview:
        if self.pos + nbytes > len(self.buf):
            raise ArtifactError(f"{self.source}: payload ends inside {what}")
        view = self.buf[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return view


def _check_wrapper(data: bytes, source: str) -> tuple[int, int]:
    """Check magic, version, length and CRC; return the version and the wrapper's codec."""
    if len(data) < _PREAMBLE.size + 4:
        raise ArtifactError(f"{source}: {len(data)} bytes is too short to be an artifact")
    magic, version, codec, _, body_len = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: not a distopt artifact (magic {magic!r}, expected "
                            f"{MAGIC!r})")
    if version not in VERSIONS:
        raise ArtifactError(f"{source}: artifact version {version} is not supported (this "
                            f"distopt reads versions {', '.join(map(str, VERSIONS))})")
    expected = _PREAMBLE.size + body_len + 4
    if len(data) != expected:
        raise ArtifactError(f"{source}: length {len(data)} bytes, header says {expected}; the "
                            "file is truncated or has trailing data")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise ArtifactError(f"{source}: CRC mismatch; the file is corrupt")
    return version, codec


def _read_header(data: bytes, source: str) -> tuple[int, dict[str, Any]]:
    """Version 1: the wrapper's codec and the validated header (spec and tensor list agree
    with each other)."""
    _, codec = _check_wrapper(data, source)
    if codec not in _CODECS:
        raise ArtifactError(f"{source}: unknown codec {codec}")
    prefix = _inflate(data[_PREAMBLE.size:-4], codec, 4 + MAX_HEADER_BYTES, source)
    if len(prefix) < 4:
        raise ArtifactError(f"{source}: body too short for its header")
    (hlen,) = struct.unpack_from("<I", prefix)
    if hlen > MAX_HEADER_BYTES or 4 + hlen > len(prefix):
        raise ArtifactError(f"{source}: header length {hlen} is beyond the body or the "
                            f"{MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(bytes(prefix[4:4 + hlen]))
    except (ValueError, RecursionError) as e:  # JSON, UTF-8 and nesting-depth errors
        raise ArtifactError(f"{source}: header is not valid JSON ({e.__class__.__name__})") \
            from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) or \
            not isinstance(header.get("meta", {}), dict):
        raise ArtifactError(f"{source}: header lacks its spec, tensors or meta")
    problem = _spec_problem(header.get("spec"))
    if problem is None:
        expected_state, weights = _expected_state(ModelSpec.from_dict(header["spec"]))
        n_params = sum(math.prod(s) for s in expected_state.values())
        if n_params > MAX_PARAMS:
            problem = f"spec asks for {n_params:,} parameters; at most {MAX_PARAMS:,} are read"
    if problem is None:
        names = [e.get("name") if isinstance(e, dict) else None for e in header["tensors"]]
        for e in header["tensors"]:
            problem = problem or _tensor_problem(e, expected_state, weights)
        if problem is None and sorted(names) != sorted(expected_state):
            problem = f"tensors {names} do not match the spec's parameters " \
                      f"{list(expected_state)}"
    if problem:
        raise ArtifactError(f"{source}: invalid header: {problem}")
    header["hlen"] = hlen
    return codec, header


def decode(data: bytes, source: str = "artifact") -> Decoded:
    """Rebuild the model from artifact bytes.

    Checks magic, version, length and CRC; then validates the header's spec and tensor list
    against each other before anything is built, decompresses no more than those tensors can
    need, and checks every read against the payload. Any problem raises :class:`ArtifactError`
    naming it, whatever the file holds."""
    version, _ = _check_wrapper(data, source)
    if version == 2:
        return _decode_v2(data, source)
    codec, header = _read_header(data, source)
    hlen = header.pop("hlen")
    limit = 4 + hlen + _payload_bound(header["tensors"])
    raw = _inflate(data[_PREAMBLE.size:-4], codec, limit, source)
    if len(raw) > limit:
        raise ArtifactError(f"{source}: body decompresses to more than its tensors need")
    reader = _Reader(memoryview(raw)[4 + hlen:], source)
    state = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for e in header["tensors"]:
        shape, bits = tuple(e["shape"]), e["bits"]
        n = math.prod(shape)
        what = f"tensor {e['name']!r}"
        if e["sparse"]:
            mask = reader.take((n + 7) // 8, what)
            nz = np.unpackbits(np.frombuffer(mask, np.uint8))[:n].astype(bool)
        else:
            nz = np.ones(n, bool)
        count = int(nz.sum())
        values = np.zeros(n, np.float32)
        if bits == 32:
            values[nz] = np.frombuffer(reader.take(4 * count, what), "<f4")
        else:
            axis = e.get("axis", 0)
            rows = shape[axis]
            scale = np.frombuffer(reader.take(4 * rows, what), "<f4")
            packed = {16: 2 * count, 8: count, 4: (count + 1) // 2}[bits]
            q, _ = _unpack(reader.take(packed, what), count, bits)
            dense_q = np.zeros(n, np.float32)
            dense_q[nz] = q
            with np.errstate(over="ignore", invalid="ignore"):  # crafted scales may overflow
                values = (dense_q.reshape(shape) * scale[None, :] if axis == 1 else
                          dense_q.reshape(rows, -1) * scale[:, None]).ravel()
            codes[e["name"]] = (dense_q.reshape(shape).astype(np.int32), scale.copy())
        state[e["name"]] = torch.from_numpy(values.reshape(shape).copy())
    if reader.pos != len(reader.buf):
        raise ArtifactError(f"{source}: {len(reader.buf) - reader.pos} bytes of payload follow "
                            "the last tensor")
    model = build_model(ModelSpec.from_dict(header["spec"]))
    model.load_state_dict(state)
    model.eval()
    return Decoded(model, header.get("meta", {}), header["tensors"], codes)


# ------------------------------------------------------------------------- format version 2

SECTIONS = (M.BYTES_HEADER, M.BYTES_INDEX, M.BYTES_SCALES, M.BYTES_VALUES)  # in file order
_RAW, _LZMA, _ZLIB, _LZMA_FLAT, _ZLIB_DICT = 0, 1, 2, 3, 4  # section codecs
_CODECS_V2 = (_RAW, _LZMA, _ZLIB, _LZMA_FLAT, _ZLIB_DICT)
_BYTE_LAYOUT = 0x10  # values section: sub-byte symbols stored one per byte
# zlib's preset dictionary for _ZLIB_DICT: the strings a header is made of, so that a small
# model's header does not pay for spelling them out. Fixed for format version 2 forever.
_ZDICT = (b'"lstm","gru","rnn","conv1d","mlp","head":"gap","cell":"gru","cell":"lstm",'
          b'"rnn_units":[,"vocab_size":"embed_dim":"kernel_size":5,"resize":,"tokens":true},'
          b'"config_name":"signals_conv1d","text_rnn","mnist_rnn","mnist_cnn_full","data_digest":"'
          b'"}},"t":[[8,16,1,[32],[4,16,2,[4,16,1,[4,16,0,[8,16,0,[16],[16],[16],'
          b'{"spec":{"family":"cnn","in_shape":[1,28,28],"num_classes":10,"conv_channels":[16,32],'
          b'"dense_units":[32]},"meta":{"input":{"scale":0.003921569,"mean":0.1307,"std":0.3081,'
          b'"tokens":false},"config_name":"mnist_cnn","data_digest":"')


def _lzma_filters(size: int, flat: bool) -> list[dict[str, Any]]:
    """LZMA2 at its strongest, with a dictionary no bigger than the input (a bigger one only
    costs time); ``flat``: no literal context, which suits streams of codes."""
    f: dict[str, Any] = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                         "dict_size": max(4096, size)}
    if flat:
        f.update(lc=0, lp=0, pb=0)
    return [f]


def _zlib_dict(raw: bytes) -> bytes:
    c = zlib.compressobj(9, zdict=_ZDICT)
    return c.compress(raw) + c.flush()
INDEX_DENSE, INDEX_BITMASK, INDEX_RICE = 0, 1, 2
INDEX_NAMES = {INDEX_DENSE: "dense", INDEX_BITMASK: "bitmask", INDEX_RICE: "rice"}
_SPEC_DEFAULTS = {k: (list(v) if isinstance(v, tuple) else v)
                  for k, v in ModelSpec("cnn", (1, 1, 1), 1).to_dict().items()
                  if k not in ("family", "in_shape", "num_classes")}


def _pack_section(raw: bytes, flags: int = 0) -> tuple[int, bytes]:
    """The smallest of the section's codings, as (codec byte, stored bytes)."""
    options = {_RAW: raw, _ZLIB: zlib.compress(raw, 9), _ZLIB_DICT: _zlib_dict(raw)}
    if raw:
        for codec, flat in ((_LZMA, False), (_LZMA_FLAT, True)):
            options[codec] = lzma.compress(raw, format=lzma.FORMAT_RAW,
                                           filters=_lzma_filters(len(raw), flat))
    codec = min(options, key=lambda c: (len(options[c]), c))
    return codec | flags, options[codec]


def _section(codec: int, raw_len: int, stored: bytes) -> bytes:
    return bytes([codec]) + K.varint(raw_len) + K.varint(len(stored)) + stored


@dataclass
class _Coded:
    """One weight tensor, coded: its header entry and its bytes in three sections."""

    entry: list[int]
    index: bytes = b""
    scales: bytes = b""
    values: list[tuple[np.ndarray, int]] | bytes = b""  # (symbols, width) or float32 bytes


def _estimate(index: bytes, values: np.ndarray | bytes) -> int:
    """A cheap stand-in for a coding's compressed bytes, to choose the index per tensor."""
    vb = values if isinstance(values, bytes) else values.astype(np.uint8 if values.size == 0 or
                                                                values.max() < 256 else "<u2"
                                                                ).tobytes()
    return len(zlib.compress(index, 9)) + len(zlib.compress(vb, 9))


def _code_weight(a: np.ndarray, bits: int, axis: int) -> _Coded:
    """Quantize (as training did) and pick the smallest index coding for one weight."""
    flat = a.ravel()
    if bits == 32:
        sbits, scales, kept_of = 0, b"", flat
        nz = flat != 0
    else:
        q, scale = quantize_codes(torch.from_numpy(a), bits, axis)
        q, scale = q.numpy().ravel(), scale.numpy()
        exact16 = bool(np.array_equal(scale.astype(np.float16).astype(np.float32), scale))
        sbits = 16 if exact16 else 32
        scales = scale.astype("<f2" if exact16 else "<f4").tobytes()
        kept_of, nz = q, q != 0
    n, nnz = flat.size, int(nz.sum())

    def values(keep: np.ndarray | None) -> np.ndarray | bytes:
        v = kept_of if keep is None else kept_of[keep]
        if bits == 32:
            return v.astype("<f4").tobytes()
        return K.to_symbols(v, bits, keep is not None)

    options = [(_estimate(b"", values(None)), [bits, sbits, INDEX_DENSE, n, 0, 0], b"", None)]
    if nnz < n:
        mask = np.packbits(nz).tobytes()
        options.append((_estimate(mask, values(nz)), [bits, sbits, INDEX_BITMASK, nnz, 0, 0],
                        mask, nz))
        gaps = K.gaps_of(nz)
        k = K.best_rice_k(gaps)
        low, unary = K.rice_encode(gaps, k)
        options.append((_estimate(low + unary, values(nz)),
                        [bits, sbits, INDEX_RICE, nnz, k, len(unary)], low + unary, nz))
    _, entry, index, keep = min(options, key=lambda o: o[0])
    v = values(keep)
    stored: list[tuple[np.ndarray, int]] | bytes = v if isinstance(v, bytes) else \
        [(v, K.symbol_width(bits, keep is not None))]
    return _Coded(entry, index, scales, stored)


def _encode_v2(model: Model, bits: int, meta: dict[str, Any], weight_bits: dict[str, int],
               axes: dict[str, int]) -> bytes:
    fbits = float_bits(bits)
    entries: list[list[int]] = []
    index, params = [], []
    values: list[tuple[np.ndarray, int] | bytes] = []
    for name, t in model.state_dict().items():
        a = t.detach().float().contiguous().cpu().numpy()
        if name in axes:
            c = _code_weight(a, weight_bits.get(name, bits), axes[name])
            entries.append(c.entry)
            index.append(c.index)
            params.append(c.scales)
            values.extend(c.values if isinstance(c.values, list) else [c.values])
        else:
            half = a.astype(np.float16)
            use16 = fbits == 16 and bool(np.isfinite(half).all())
            entries.append([16 if use16 else 32])
            params.append(half.astype("<f2").tobytes() if use16 else a.astype("<f4").tobytes())
    # The spec as inference needs it: non-default keys, no dropout (training only).
    spec = {k: v for k, v in model.spec.to_dict().items() if k != "dropout" and
            (k not in _SPEC_DEFAULTS or _jsonable(v) != _SPEC_DEFAULTS[k])}
    meta = _short_floats(meta)
    header = json.dumps({"spec": spec, "meta": meta, "t": entries},
                        separators=(",", ":")).encode()
    body = b""
    for raw in (header, b"".join(index), b"".join(params)):
        codec, stored = _pack_section(raw)
        body += _section(codec, len(raw), stored)
    # Values: bit-packed, or (when some symbols are narrower than a byte) one per byte, which
    # LZMA often models better; whichever ends smaller.
    layouts = {0: b"".join(v if isinstance(v, bytes) else K.pack_uint(*v) for v in values)}
    if any(not isinstance(v, bytes) and v[1] < 8 for v in values):
        layouts[_BYTE_LAYOUT] = b"".join(
            v if isinstance(v, bytes) else
            v[0].astype(np.uint8).tobytes() if v[1] < 8 else K.pack_uint(*v) for v in values)
    packed = {flag: _pack_section(raw, flag) for flag, raw in layouts.items()}
    flag = min(packed, key=lambda f: (len(packed[f][1]), f))
    body += _section(packed[flag][0], len(layouts[flag]), packed[flag][1])
    return _wrap(2, 0, body)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _short_floats(v: Any) -> Any:
    """Meta with every float written as its shortest float32 decimal: the same number to a
    float32 computation (input normalization runs in float32), in half the characters."""
    if isinstance(v, float) and math.isfinite(v):
        return float(np.format_float_positional(np.float32(v), unique=True, trim="-"))
    if isinstance(v, dict):
        return {k: _short_floats(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_short_floats(x) for x in v]
    return v


def _sections(data: bytes, source: str) -> list[tuple[int, int, memoryview, int]]:
    """The four sections of a version-2 file as (codec byte, raw length, stored bytes, bytes
    the section takes in the file), framing checked, nothing decompressed."""
    body = memoryview(data)[_PREAMBLE.size:-4]
    out, pos = [], 0
    try:
        for _ in SECTIONS:
            start = pos
            if pos >= len(body):
                raise K.CodingError("the body ends before its last section")
            codec = body[pos]
            raw_len, pos = K.read_varint(body, pos + 1)
            stored_len, pos = K.read_varint(body, pos)
            if pos + stored_len > len(body):
                raise K.CodingError("a section runs past the end of the body")
            out.append((codec, raw_len, body[pos:pos + stored_len], pos + stored_len - start))
            pos += stored_len
    except K.CodingError as e:
        raise ArtifactError(f"{source}: {e}") from None
    if pos != len(body):
        raise ArtifactError(f"{source}: {len(body) - pos} bytes follow the last section")
    return out


def _unpack_section(sec: tuple[int, int, memoryview, int], expected: int, what: str,
                    source: str, flags_ok: int = 0) -> bytes:
    """Decompress one section to exactly ``expected`` bytes (or fail, reading no more)."""
    codec, raw_len, stored, _ = sec
    base = codec & ~flags_ok
    if base not in _CODECS_V2:
        raise ArtifactError(f"{source}: {what} section has unknown codec {codec}")
    if raw_len != expected:
        raise ArtifactError(f"{source}: {what} section holds {raw_len} bytes; its tensors need "
                            f"{expected}")
    raw = bytes(stored) if base == _RAW else \
        _inflate(bytes(stored), _ZLIB if base in (_ZLIB, _ZLIB_DICT) else _LZMA, expected, source,
                 _ZDICT if base == _ZLIB_DICT else b"")
    if len(raw) != expected:
        raise ArtifactError(f"{source}: {what} section decompresses to {len(raw)} bytes, "
                            f"not {expected}")
    return raw


def _entry_problem(e: Any, name: str, n: int, rows: int | None) -> str | None:
    """Why a version-2 tensor entry is invalid (``rows`` is None for float tensors)."""
    if not isinstance(e, list) or not all(type(x) is int for x in e):
        return f"tensor {name!r}: entry {e!r} is not a list of integers"
    if rows is None:
        return None if e in ([16], [32]) else f"tensor {name!r}: entry {e!r}, expected [16] " \
                                                "or [32] (float bits)"
    if len(e) != 6:
        return f"tensor {name!r}: entry {e!r} needs 6 integers"
    bits, sbits, index, nnz, k, ulen = e
    if bits not in WEIGHT_BITS:
        return f"tensor {name!r}: bits {bits} is not one of {WEIGHT_BITS}"
    if sbits not in ((0,) if bits == 32 else (16, 32)):
        return f"tensor {name!r}: scale bits {sbits} is not valid at {bits} bits"
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


def _decode_v2(data: bytes, source: str) -> Decoded:
    secs = _sections(data, source)
    header_sec = secs[0]
    if header_sec[1] > MAX_HEADER_BYTES:
        raise ArtifactError(f"{source}: header of {header_sec[1]} bytes is beyond the "
                            f"{MAX_HEADER_BYTES}-byte limit")
    raw_header = _unpack_section(header_sec, header_sec[1], "header", source)
    try:
        header = json.loads(raw_header)
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{source}: header is not valid JSON ({e.__class__.__name__})") \
            from None
    if not isinstance(header, dict) or not isinstance(header.get("spec"), dict) or \
            not isinstance(header.get("t"), list) or not isinstance(header.get("meta", {}), dict):
        raise ArtifactError(f"{source}: header lacks its spec, tensors or meta")
    spec_d = {**_SPEC_DEFAULTS, **header["spec"]}
    problem = _spec_problem(spec_d)
    if problem is None:
        spec = ModelSpec.from_dict(spec_d)
        expected_state, weights = _expected_state(spec)
        n_params = sum(math.prod(s) for s in expected_state.values())
        if n_params > MAX_PARAMS:
            problem = f"spec asks for {n_params:,} parameters; at most {MAX_PARAMS:,} are read"
        elif len(header["t"]) != len(expected_state):
            problem = f"{len(header['t'])} tensor entries; the spec's model has " \
                      f"{len(expected_state)} tensors"
    if problem is None:
        for (name, shape), e in zip(expected_state.items(), header["t"]):
            rows = shape[weights[name]] if name in weights else None
            problem = problem or _entry_problem(e, name, math.prod(shape), rows)
    if problem:
        raise ArtifactError(f"{source}: invalid header: {problem}")
    values_flag = secs[3][0] & _BYTE_LAYOUT
    sizes = [0, 0, 0]  # index, scales and biases, values
    for (name, shape), e in zip(expected_state.items(), header["t"]):
        n = math.prod(shape)
        if name not in weights:
            sizes[1] += n * e[0] // 8
            continue
        bits, sbits, index, nnz, k, ulen = e
        sizes[0] += {INDEX_DENSE: 0, INDEX_BITMASK: (n + 7) // 8,
                     INDEX_RICE: K.packed_len(nnz, k) + ulen}[index]
        if bits == 32:
            sizes[2] += 4 * nnz
        else:
            sizes[1] += shape[weights[name]] * sbits // 8
            width = K.symbol_width(bits, index != INDEX_DENSE)
            sizes[2] += nnz if values_flag and width < 8 else K.packed_len(nnz, width)
    index_r = _Reader(memoryview(_unpack_section(secs[1], sizes[0], "index", source)), source)
    params_r = _Reader(memoryview(_unpack_section(secs[2], sizes[1], "scales and biases",
                                                  source)), source)
    values_r = _Reader(memoryview(_unpack_section(secs[3], sizes[2], "values", source,
                                                  _BYTE_LAYOUT)), source)
    state: dict[str, torch.Tensor] = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tensors: list[dict[str, Any]] = []
    for (name, shape), e in zip(expected_state.items(), header["t"]):
        n, what = math.prod(shape), f"tensor {name!r}"
        if name not in weights:
            dtype = "<f2" if e[0] == 16 else "<f4"
            a = np.frombuffer(params_r.take(n * e[0] // 8, what), dtype).astype(np.float32)
            state[name] = torch.from_numpy(a.reshape(shape).copy())
            tensors.append({"name": name, "shape": list(shape), "bits": 32, "sparse": False,
                            "float_bits": e[0]})
            continue
        bits, sbits, index, nnz, k, ulen = e
        try:
            if index == INDEX_DENSE:
                keep = None
            elif index == INDEX_BITMASK:
                mask = np.unpackbits(np.frombuffer(index_r.take((n + 7) // 8, what), np.uint8))
                keep = mask[:n].astype(bool)
                if int(keep.sum()) != nnz:
                    raise K.CodingError(f"its bitmask marks {int(keep.sum())} values, not {nnz}")
            else:
                low = index_r.take(K.packed_len(nnz, k), what)
                pos = K.positions_of(K.rice_decode(low, index_r.take(ulen, what), nnz, k))
                if nnz and pos[-1] >= n:
                    raise K.CodingError(f"a position {int(pos[-1])} is beyond its {n} values")
                keep = np.zeros(n, bool)
                keep[pos] = True
            if bits == 32:
                kept = np.frombuffer(values_r.take(4 * nnz, what), "<f4")
                flat = np.zeros(n, np.float32)
                flat[slice(None) if keep is None else keep] = kept
                state[name] = torch.from_numpy(flat.reshape(shape).copy())
            else:
                axis, rows = weights[name], shape[weights[name]]
                scale = np.frombuffer(params_r.take(rows * sbits // 8, what),
                                      "<f2" if sbits == 16 else "<f4").astype(np.float32)
                width = K.symbol_width(bits, keep is not None)
                if values_flag and width < 8:
                    sym = np.frombuffer(values_r.take(nnz, what), np.uint8).astype(np.int64)
                else:
                    sym = K.unpack_uint(values_r.take(K.packed_len(nnz, width), what), nnz, width)
                q = np.zeros(n, np.float32)
                q[slice(None) if keep is None else keep] = K.from_symbols(sym, bits,
                                                                          keep is not None)
                q = q.reshape(shape)
                with np.errstate(over="ignore", invalid="ignore"):  # crafted scales
                    if axis == 1:
                        values = q * scale[None, :]
                    else:
                        values = (q.reshape(rows, -1) * scale[:, None]).reshape(shape)
                state[name] = torch.from_numpy(values.astype(np.float32))
                codes[name] = (q.astype(np.int32), scale.copy())
        except K.CodingError as err:
            raise ArtifactError(f"{source}: {what}: {err}") from None
        entry = {"name": name, "shape": list(shape), "bits": bits,
                 "sparse": index != INDEX_DENSE, "index": INDEX_NAMES[index]}
        if bits != 32:
            entry["scale_bits"] = sbits
            if weights[name] == 1:
                entry["axis"] = 1
        tensors.append(entry)
    model = build_model(ModelSpec.from_dict(spec_d))
    model.load_state_dict(state)
    model.eval()
    return Decoded(model, header.get("meta", {}), tensors, codes)


def byte_breakdown(data: bytes) -> dict[str, int]:
    """Where a version-2 file's bytes go: header (with the 16-byte wrapper and spec), index,
    scales and biases, values; they add up to the file's length. Each section is compressed on
    its own, so the split is exact. Empty for version-1 files (one jointly compressed body)."""
    version, _ = _check_wrapper(data, "artifact")
    if version != 2:
        return {}
    parts = {key: sec[3] for key, sec in zip(SECTIONS, _sections(data, "artifact"))}
    parts[M.BYTES_HEADER] += _PREAMBLE.size + 4
    return parts


def size_report(model: nn.Module, artifact: bytes) -> dict[str, float]:
    """Parameter counts and sizes of a model and its artifact (metric names from metrics)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {M.PARAMS: params, M.NONZERO_PARAMS: nonzero, M.DENSE_FP32_BYTES: 4 * params,
            M.SIZE_BYTES: len(artifact), M.COMPRESSION_RATIO: 4 * params / len(artifact),
            **byte_breakdown(artifact)}
