"""Weight pruning, weight quantization and the ``.dopt`` artifact whose length is the model size.

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

import dataclasses
import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from distopt import metrics as M
from distopt.models import (GATES, Model, ModelSpec, RecurrentNet, build_model,
                            fold_batch_norm, prunable_weights)

__all__ = [
    "ArtifactError",
    "Masks",
    "global_magnitude_masks",
    "apply_masks",
    "structured_prune",
    "quantize_per_channel",
    "quantize_tensor",
    "QuantizedWeights",
    "gradual_ratio",
    "encode",
    "decode",
    "size_report",
]

MAGIC = b"DOPT"
VERSION = 1
_PREAMBLE = struct.Struct("<4sHBBI")
_CODECS = {1: "lzma", 2: "zlib"}
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

Masks = dict[str, torch.Tensor]  # parameter name -> bool mask of the same shape


class ArtifactError(ValueError):
    """The file is not a valid distopt artifact (wrong magic, version, length or checksum)."""


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------


def _weights(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, w, _ in prunable_weights(model):
        yield name, w


def global_magnitude_masks(model: nn.Module, ratio: float) -> Masks:
    """Masks that remove the ``ratio`` smallest-magnitude weights across all weight matrices
    (conv, dense, recurrent, embedding: see :func:`distopt.models.prunable_weights`).

    Works on any memory format (``torch.nn.utils.prune`` fails on channels-last weights)."""
    named = list(_weights(model))
    if ratio <= 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in named}
    scores = torch.cat([w.detach().abs().flatten().float() for _, w in named])
    k = int(ratio * scores.numel())
    if k == 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in named}
    threshold = torch.kthvalue(scores.cpu(), k).values.item()
    masks = {n: w.detach().abs() > threshold for n, w in named}
    # Ties at the threshold can leave fewer than k removed; that is fine (never more than k).
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights (after every optimizer step, so Adam cannot revive them)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    n_keep = max(1, math.ceil((1 - ratio) * scores.numel()))
    return torch.sort(torch.topk(scores, n_keep).indices).values


@torch.no_grad()
def structured_prune(model: Model, ratio: float) -> Model:
    """Remove the ``ratio`` lowest-L1-norm channels of every conv layer, units of every hidden
    dense layer and (rnn) embedding dimensions and hidden units of every recurrent layer,
    returning a physically smaller model with the surviving weights."""
    if isinstance(model, RecurrentNet):
        return _structured_prune_rnn(model, ratio)
    model = fold_batch_norm(model)
    spec = model.spec
    # State keys of the smaller model: the same layer positions, with fewer channels/units.
    convs = [(f"features.{k}.", m) for k, m in enumerate(model.features)
             if isinstance(m, nn.Conv2d)]
    denses = [(f"classifier.{k}.", m) for k, m in enumerate(model.classifier)
              if isinstance(m, nn.Linear)]
    state: dict[str, torch.Tensor] = {}
    keep_in = torch.arange(spec.in_shape[0])
    new_channels = []
    for key, conv in convs:
        w = conv.weight.contiguous()[:, keep_in]
        keep = _keep(w.abs().sum(dim=(1, 2, 3)).float(), ratio)
        state[f"{key}weight"], state[f"{key}bias"] = w[keep], conv.bias[keep]
        new_channels.append(len(keep))
        keep_in = keep
    if convs:
        h, w_ = (1, 1) if spec.head == "gap" else spec.conv_out_side()
        # Flattened features are (channel, y, x): keep every spatial position of kept channels.
        keep_in = (keep_in[:, None] * (h * w_) + torch.arange(h * w_)[None]).flatten()
    else:
        keep_in = torch.arange(int(np.prod(spec.in_shape)))
    new_units = _prune_head(denses, keep_in, ratio, state)
    new = build_model(dataclasses.replace(spec, conv_channels=tuple(new_channels),
                                          dense_units=tuple(new_units)))
    new.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return new


def _prune_head(denses: list[tuple[str, nn.Linear]], keep_in: torch.Tensor, ratio: float,
                state: dict[str, torch.Tensor]) -> list[int]:
    """Prune hidden dense units (never the classifier's outputs) of ``(state key prefix,
    layer)`` pairs into ``state``; returns the new hidden widths."""
    new_units = []
    for i, (key, dense) in enumerate(denses):
        w = dense.weight[:, keep_in]
        last = i == len(denses) - 1
        keep = torch.arange(w.shape[0]) if last else _keep(w.abs().sum(1).float(), ratio)
        state[f"{key}weight"], state[f"{key}bias"] = w[keep], dense.bias[keep]
        if not last:
            new_units.append(len(keep))
        keep_in = keep
    return new_units


def _structured_prune_rnn(model: RecurrentNet, ratio: float) -> RecurrentNet:
    """Embedding dimensions and recurrent hidden units, scored by the L1 norm of the weights
    that produce them (a unit's rows in every gate block of ``weight_ih`` and ``weight_hh``).

    Removing a unit is exact for a unit whose incoming weights and biases are zero: its state
    stays 0 in all three cells (tanh(0) = 0; GRU and LSTM keep 0 * 0.5 = 0), so it feeds
    nothing forward. A test checks the pruned model against the original with the removed units'
    incoming weights zeroed."""
    spec = model.spec
    state: dict[str, torch.Tensor] = {}
    embed_dim = 0
    if model.embedding is not None:
        w = model.embedding.weight
        keep_in = _keep(w.abs().sum(0).float(), ratio)
        state["embedding.weight"] = w[:, keep_in]
        embed_dim = len(keep_in)
    else:
        keep_in = torch.arange(spec.in_shape[0] * spec.in_shape[2])
    gates = GATES[spec.cell]
    new_units = []
    for i, layer in enumerate(model.recurrent):
        hidden = layer.hidden_size
        w_ih, w_hh = layer.weight_ih_l0[:, keep_in], layer.weight_hh_l0
        per_unit = (w_ih.abs().sum(1) + w_hh.abs().sum(1)).reshape(gates, hidden).sum(0)
        keep = _keep(per_unit.float(), ratio)
        rows = (torch.arange(gates)[:, None] * hidden + keep[None]).flatten()
        p = f"recurrent.{i}."
        state[p + "weight_ih_l0"], state[p + "weight_hh_l0"] = w_ih[rows], w_hh[rows][:, keep]
        state[p + "bias_ih_l0"], state[p + "bias_hh_l0"] = layer.bias_ih_l0[rows], \
            layer.bias_hh_l0[rows]
        new_units.append(len(keep))
        keep_in = keep
    denses = [(f"classifier.{k}.", m) for k, m in enumerate(model.classifier)
              if isinstance(m, nn.Linear)]
    new_dense = _prune_head(denses, keep_in, ratio, state)
    new = build_model(dataclasses.replace(spec, rnn_units=tuple(new_units),
                                          dense_units=tuple(new_dense), embed_dim=embed_dim))
    new.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return new  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


def quantize_per_channel(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization: ``w ~= q * scale[:, None...]``.

    Returns int codes in ``[-(2^(b-1)-1), 2^(b-1)-1]`` and float32 scales (1.0 for all-zero
    channels, so decoding never divides by zero)."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1).astype(np.float32)
    amax = np.abs(flat).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(flat / scale[:, None]), -qmax, qmax).astype(np.int32)
    return q.reshape(w.shape), scale


def _pack(q: np.ndarray, bits: int) -> bytes:
    if bits == 16:
        return q.astype("<i2").tobytes()
    if bits == 8:
        return q.astype(np.int8).tobytes()
    u = (q + 8).astype(np.uint8)  # 4 bits: offset to 1..15, two per byte
    if len(u) % 2:
        u = np.append(u, np.uint8(8))
    return (u[0::2] | (u[1::2] << 4)).tobytes()


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


def gradual_ratio(final: float, k: int, total: int) -> float:
    """Sparsity for fine-tune epoch ``k`` of ``total`` under the cubic schedule of Zhu & Gupta
    (2017): fast at first, when many small weights can go, and slower towards ``final``,
    reached in the last epoch."""
    return final * (1 - (1 - (k + 1) / total) ** 3)


@torch.no_grad()
def quantize_tensor(w: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """What the artifact stores, in torch: symmetric per-row (axis 0) or per-column (axis 1)
    integers times a float32 scale, with the same rounding (half to even) as
    :func:`quantize_per_channel`."""
    qmax = 2 ** (bits - 1) - 1
    x = w.float()
    x = x.transpose(0, 1) if axis == 1 else x
    flat = x.reshape(x.shape[0], -1)
    amax = flat.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).float()
    q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax) * scale[:, None]
    q = q.reshape(x.shape)
    return (q.transpose(0, 1) if axis == 1 else q).to(w.dtype)


class QuantizedWeights:
    """Within the block, every prunable weight holds its quantized value; on exit the float
    weights come back. Gradients computed inside are those of the quantized model and update
    the float weights (the straight-through estimator), so fine-tuning learns the rounding the
    artifact will apply."""

    def __init__(self, model: nn.Module, bits: int) -> None:
        self.weights = [(w, axis) for _, w, axis in prunable_weights(model)]
        self.bits = bits
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> QuantizedWeights:
        with torch.no_grad():
            for w, axis in self.weights:
                self.saved.append(w.detach().clone())
                w.copy_(quantize_tensor(w, self.bits, axis))
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for (w, _), kept in zip(self.weights, self.saved):
                w.copy_(kept)
        self.saved = []


# --------------------------------------------------------------------------------------------
# The artifact
# --------------------------------------------------------------------------------------------


def encode(model: Model, bits: int, meta: dict[str, Any] | None = None) -> bytes:
    """Serialize a (pruned) model: sparse bitmask + per-channel quantized weights, compressed.

    Zero weights (pruned or exactly zero) are not stored; ``bits`` 32 keeps float32 values."""
    if bits not in (32, 16, 8, 4):
        raise ValueError(f"bits must be one of 32, 16, 8, 4, but got {bits!r}")
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
        b = bits if is_weight else 32
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
    model: Model
    meta: dict[str, Any]
    tensors: list[dict[str, Any]]


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
    for key, allowed, default in (("family", ("cnn", "mlp", "rnn"), None),
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
    if d["family"] == "cnn" and lists["conv_channels"]:
        h, w = lists["in_shape"][1:]
        for _ in lists["conv_channels"]:
            h, w = (h - d["kernel_size"] + 1) // 2, (w - d["kernel_size"] + 1) // 2
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
        state[e["name"]] = torch.from_numpy(values.reshape(shape).copy())
    if reader.pos != len(reader.buf):
        raise ArtifactError(f"{source}: {len(reader.buf) - reader.pos} bytes of payload follow "
                            "the last tensor")
    model = build_model(ModelSpec.from_dict(header["spec"]))
    model.load_state_dict(state)
    model.eval()
    return Decoded(model, header.get("meta", {}), header["tensors"])


def size_report(model: nn.Module, artifact: bytes) -> dict[str, float]:
    """Parameter counts and sizes of a model and its artifact (metric names from metrics)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {M.PARAMS: params, M.NONZERO_PARAMS: nonzero, M.DENSE_FP32_BYTES: 4 * params,
            M.SIZE_BYTES: len(artifact), M.COMPRESSION_RATIO: 4 * params / len(artifact)}
