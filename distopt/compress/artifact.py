"""The ``.dopt`` artifact, whose length is the model size.

The artifact is what a user deploys and what every reported compressed accuracy is measured on:
``decode(encode(model))`` is evaluated, never the in-memory model.

File layout (little-endian)::

    b"DOPT" | version u16 | codec u8 | reserved u8 | body_len u32 | body | crc32 u32
    body (compressed by codec) = header_len u32 | header JSON | tensor payloads in header order

Each weight tensor's payload (conv, dense, recurrent, embedding) is: a bitmask of its non-zeros
(only if it is sparse), then one float32 scale per output channel, or per column for embeddings
(only if quantized), then the non-zero values, as float32, int16, int8 or two 4-bit values per
byte. Biases stay float32. The CRC covers everything before
it, so truncated or altered files are rejected.
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
from distopt.compress.quantization import quantize_per_channel
from distopt.models import GATES, Model, ModelSpec, build_model, prunable_weights

__all__ = ["ArtifactError", "Decoded", "decode", "encode", "size_report"]

MAGIC = b"DOPT"
VERSION = 1
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
           weight_bits: Mapping[str, int] | None = None) -> bytes:
    """Serialize a (pruned) model: sparse bitmask + per-channel quantized weights, compressed.

    Zero weights (pruned or exactly zero) are not stored; ``bits`` 32 keeps float32 values.
    ``weight_bits`` gives single weights (by parameter name) their own bits: mixed widths,
    recorded per tensor (the format always had a width per tensor)."""
    weight_bits = dict(weight_bits or {})
    for b in (bits, *weight_bits.values()):
        if b not in (32, 16, 8, 4):
            raise ValueError(f"bits must be one of 32, 16, 8, 4, but got {b!r}")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMS:
        raise ValueError(f"the model has {n_params:,} parameters; the artifact holds at most "
                         f"{MAX_PARAMS:,} (distopt.compress.MAX_PARAMS)")
    if getattr(model.spec, "batch_norm", False):
        raise ValueError("fold BatchNorm into the convs first (distopt.models.fold_batch_norm): "
                         "the artifact stores only what its decoder rebuilds")
    axes = {n: axis for n, _, axis in prunable_weights(model)}
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
    head = _PREAMBLE.pack(MAGIC, VERSION, codec, 0, len(body)) + body
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
                                  ("cell", tuple(GATES), "rnn"), ("head", ("flatten", "gap"),
                                                                  "flatten")):
        v = d.get(key, default)
        if not isinstance(v, str) or v not in allowed:
            name = {"family": "model family", "cell": "recurrent cell", "head": "head"}[key]
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
        for _ in lists["conv_channels"]:
            h, w = (h - kh + 1) // ph, (w - d["kernel_size"] + 1) // 2
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


def _inflate(body: bytes, codec: int, limit: int, source: str) -> bytes:
    """Decompress at most ``limit`` bytes; a body that holds more is rejected, not expanded."""
    try:
        if codec == 1:
            # No match can reach further back than the output we accept, so a dictionary of
            # that size decodes every valid body (the encoder's preset holds 64 MB).
            dict_size = min(max(limit + 1, 4096), 64 << 20)
            filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
            out = lzma.LZMADecompressor(format=lzma.FORMAT_RAW,
                                        filters=filters).decompress(body, limit + 1)
        else:
            out = zlib.decompressobj().decompress(body, limit + 1)
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


def _read_header(data: bytes, source: str) -> tuple[int, dict[str, Any]]:
    """Check the wrapper (magic, version, length, CRC, codec) and return the codec and the
    validated header (spec and tensor list agree with each other)."""
    if len(data) < _PREAMBLE.size + 4:
        raise ArtifactError(f"{source}: {len(data)} bytes is too short to be an artifact")
    magic, version, codec, _, body_len = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: not a distopt artifact (magic {magic!r}, expected "
                            f"{MAGIC!r})")
    if version != VERSION:
        raise ArtifactError(f"{source}: artifact version {version} is not supported (this "
                            f"distopt reads version {VERSION})")
    expected = _PREAMBLE.size + body_len + 4
    if len(data) != expected:
        raise ArtifactError(f"{source}: length {len(data)} bytes, header says {expected}; the "
                            "file is truncated or has trailing data")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise ArtifactError(f"{source}: CRC mismatch; the file is corrupt")
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


def size_report(model: nn.Module, artifact: bytes) -> dict[str, float]:
    """Parameter counts and sizes of a model and its artifact (metric names from metrics)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {M.PARAMS: params, M.NONZERO_PARAMS: nonzero, M.DENSE_FP32_BYTES: 4 * params,
            M.SIZE_BYTES: len(artifact), M.COMPRESSION_RATIO: 4 * params / len(artifact)}
