"""Format version 1 of the ``.dopt`` artifact: still decoded, and written on request
(``encode(..., version=1)``) for comparisons. One compressed body (LZMA or zlib, whichever is
smaller) of ``header_len u32 | JSON header (names, shapes, bits, sparsity) | payloads``: each
weight a bitmask if sparse, float32 scales, then its non-zero values as float32, int16, int8 or
two 4-bit values per byte; float32 biases."""

from __future__ import annotations

import json
import lzma
import math
import struct
import zlib
from typing import Any

import numpy as np
import torch

from distopt.compress.decoded import Decoded
from distopt.compress.quantization import quantize_per_channel
from distopt.compress.spec_check import check_trust, expected_state, spec_problem
from distopt.compress.wrapper import (MAX_HEADER_BYTES, MAX_PARAMS, PREAMBLE, ArtifactError,
                                      Reader, check_wrapper, inflate, wrap)
from distopt.models import Model, ModelSpec, build_model

__all__ = ["BITS", "decode_v1", "encode_v1"]

BITS = (32, 16, 8, 4)  # what version 1 holds
_CODECS = {1: "lzma", 2: "zlib"}
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


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


def encode_v1(model: Model, bits: int, meta: dict[str, Any], weight_bits: dict[str, int],
              axes: dict[str, int]) -> bytes:
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
    return wrap(1, codec, body)



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


def _read_header(data: bytes, source: str, trust_code: bool = False
                 ) -> tuple[int, dict[str, Any]]:
    """Version 1: the wrapper's codec and the validated header (spec and tensor list agree
    with each other)."""
    _, codec = check_wrapper(data, source)
    if codec not in _CODECS:
        raise ArtifactError(f"{source}: unknown codec {codec}")
    prefix = inflate(data[PREAMBLE.size:-4], codec, 4 + MAX_HEADER_BYTES, source)
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
    problem = spec_problem(header.get("spec"))
    if problem is None:
        check_trust(header["spec"], source, trust_code)
        shapes, weights = expected_state(ModelSpec.from_dict(header["spec"]))
        n_params = sum(math.prod(s) for s in shapes.values())
        if n_params > MAX_PARAMS:
            problem = f"spec asks for {n_params:,} parameters; at most {MAX_PARAMS:,} are read"
    if problem is None:
        names = [e.get("name") if isinstance(e, dict) else None for e in header["tensors"]]
        for e in header["tensors"]:
            problem = problem or _tensor_problem(e, shapes, weights)
        if problem is None and sorted(names) != sorted(shapes):
            problem = f"tensors {names} do not match the spec's parameters " \
                      f"{list(shapes)}"
    if problem:
        raise ArtifactError(f"{source}: invalid header: {problem}")
    header["hlen"] = hlen
    return codec, header


def decode_v1(data: bytes, source: str, trust_code: bool = False) -> Decoded:
    codec, header = _read_header(data, source, trust_code)
    hlen = header.pop("hlen")
    limit = 4 + hlen + _payload_bound(header["tensors"])
    raw = inflate(data[PREAMBLE.size:-4], codec, limit, source)
    if len(raw) > limit:
        raise ArtifactError(f"{source}: body decompresses to more than its tensors need")
    reader = Reader(memoryview(raw)[4 + hlen:], source)
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
