"""The ``.dopt`` artifact, whose length is the model size: :func:`encode` and :func:`decode`,
over the format's parts.

The artifact is what a user deploys and what every reported compressed accuracy is measured on:
``decode(encode(model))`` is evaluated, never the in-memory model. The format is kept apart from
the policy that fills it (compression methods choose each tensor's coding):

- :mod:`~distopt.compress.wrapper`: magic, version, length and CRC around every version's body,
  bounded decompression;
- :mod:`~distopt.compress.spec_check`: a file's model spec checked before anything is built;
- :mod:`~distopt.compress.format_v2` (versions 2 and 3, written) over
  :mod:`~distopt.compress.sections` and the per-tensor :mod:`~distopt.compress.codings`;
- :mod:`~distopt.compress.format_v1` (version 1: still decoded, written for comparisons).

Golden files under ``tests/golden/`` pin every version: files written by earlier distopt decode
to the same parameters forever.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from torch import nn

from distopt import metrics as M
from distopt.compress.coding import Coding, IntCodes
from distopt.compress.decoded import Decoded
from distopt.compress.flash import flash_bytes
from distopt.compress.format_v1 import BITS as V1_BITS
from distopt.compress.format_v1 import decode_v1, encode_v1
from distopt.compress.format_v2 import decode_v2, encode_v2, version_for
from distopt.compress.integer import META_KEY, IntegerNet, from_meta, quant_points
from distopt.compress.quantization import WEIGHT_BITS
from distopt.compress.sections import SECTIONS, sections
from distopt.compress.wrapper import MAX_PARAMS, PREAMBLE, VERSIONS, ArtifactError, check_wrapper
from distopt.models import Model, ModelSpec, prunable_weights
from distopt.models.cost import activation_cost, trace

__all__ = ["ArtifactError", "Decoded", "MAX_PARAMS", "VERSION", "byte_breakdown", "decode",
           "device_report", "encode", "size_report"]

VERSION = 2  # what encode writes when every tensor fits it (3 for codings 2 lacks)


def encode(model: Model, bits: int, meta: dict[str, Any] | None = None,
           weight_bits: Mapping[str, int] | None = None, version: int | None = None,
           codings: Mapping[str, Coding] | None = None) -> bytes:
    """Serialize a (pruned) model: per-channel quantized weights, where they are non-zero.

    Zero weights (pruned, or rounded to zero) are not stored when an index is smaller than
    storing them; ``bits`` 32 keeps float32 values. ``weight_bits`` gives single weights (by
    parameter name) their own bits: mixed widths, recorded per tensor; ``codings`` gives
    weights any coding (:mod:`distopt.compress.coding`: integer codes, a codebook). ``version``:
    by default the oldest that holds the codings (2, or 3 for a codebook); 1 writes the old
    format (no 3- or 2-bit weights, no codebooks), for comparisons."""
    per_tensor: dict[str, Coding] = {n: IntCodes(b) for n, b in (weight_bits or {}).items()}
    per_tensor.update(codings or {})
    version = version_for(per_tensor) if version is None else version
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, but got {version!r}")
    if version < 3 and version_for(per_tensor) == 3:
        raise ValueError(f"format version {version} has no coding for "
                         f"{sorted({type(c).__name__ for c in per_tensor.values()})}")
    allowed = V1_BITS if version == 1 else WEIGHT_BITS
    for b in (bits, *(c.bits for c in per_tensor.values() if isinstance(c, IntCodes))):
        if b not in allowed:
            raise ValueError(f"bits must be one of {', '.join(map(str, allowed))} (format "
                             f"version {version}), but got {b!r}")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMS:
        raise ValueError(f"the model has {n_params:,} parameters; the artifact holds at most "
                         f"{MAX_PARAMS:,} (distopt.compress.MAX_PARAMS)")
    if not isinstance(getattr(model, "spec", None), ModelSpec):
        raise ValueError(
            f"a {type(model).__name__} has no .spec (a distopt.ModelSpec), so no decoder could "
            "rebuild it from the file: build it with distopt.build_model(spec), where spec is a "
            "built-in family's or ModelSpec.external('package.module:Factory', in_shape, "
            "num_classes, options) for your own model")
    if getattr(model.spec, "batch_norm", False):
        raise ValueError("fold BatchNorm into the convs first (distopt.models.fold_batch_norm): "
                         "the artifact stores only what its decoder rebuilds")
    axes = {n: axis for n, _, axis in prunable_weights(model)}
    if version == 1:
        return encode_v1(model, bits, meta or {},
                         {n: c.bits for n, c in per_tensor.items() if isinstance(c, IntCodes)},
                         axes)
    return encode_v2(model, bits, meta or {}, per_tensor, axes, version)


def decode(data: bytes, source: str = "artifact", trust_code: bool = False) -> Decoded:
    """Rebuild the model from artifact bytes.

    A file of a user's own model family (``model.family: "package.module:Factory"``) is
    rebuilt by importing and calling that factory: refused unless the path is trusted in this
    process (a config naming it was loaded here) or ``trust_code`` is True.

    Checks magic, version, length and CRC; then validates the header's spec and tensor list
    against each other before anything is built, decompresses no more than those tensors can
    need, and checks every read against the payload. Any problem raises :class:`ArtifactError`
    naming it, whatever the file holds."""
    version, _ = check_wrapper(data, source)
    if version == 1:
        return decode_v1(data, source, trust_code)
    return _integer(decode_v2(data, source, version, trust_code), source)


def _integer(decoded: Decoded, source: str) -> Decoded:
    """A file whose meta holds activation grids, with its integer reference built (checked:
    one grid per point, integer weights of 8 bits or fewer); other files as they are."""
    entry = decoded.meta.get(META_KEY) if isinstance(decoded.meta, dict) else None
    if entry is None:
        return decoded
    try:
        points, _ = quant_points(trace(decoded.model, decoded.model.spec), source)
        grids = from_meta(entry, len(points) + 1, source)
        bits = {t["name"]: int(t["bits"]) for t in decoded.tensors
                if t.get("coding") != "codebook"}
        integer = IntegerNet(decoded.model, decoded.model.spec, decoded.codes, bits, grids)
    except ValueError as e:
        raise ArtifactError(f"{source}: not a valid integer model: {e}") from None
    return dataclasses.replace(decoded, integer=integer)


def byte_breakdown(data: bytes) -> dict[str, int]:
    """Where a version-2 or -3 file's bytes go: header (with the 16-byte wrapper and spec), index,
    scales and biases, values; they add up to the file's length. Each section is compressed on
    its own, so the split is exact. Empty for version-1 files (one jointly compressed body)."""
    version, _ = check_wrapper(data, "artifact")
    if version == 1:
        return {}
    parts = {key: sec[3] for key, sec in zip(SECTIONS, sections(data, "artifact"))}
    parts[M.BYTES_HEADER] += PREAMBLE.size + 4
    return parts


def device_report(decoded: Decoded) -> dict[str, int]:
    """What a device pays to run a decoded file in place: ``flash_bytes`` and
    ``weight_flash_bytes`` (:mod:`distopt.compress.flash`), ``peak_ram_bytes``, ``macs`` and
    ``nonzero_macs`` (:mod:`distopt.models.cost`): float32 activations, or int8 ones and the
    integer kernels' constants for an integer model."""
    integer = decoded.integer is not None
    tables = {f"{p}.weight" for p, m in decoded.model.named_modules()
              if isinstance(m, nn.Embedding)}
    return {**flash_bytes(decoded.tensors, integer, tables),
            **activation_cost(decoded.model, decoded.model.spec, 1 if integer else 4)}


def size_report(model: nn.Module, artifact: bytes) -> dict[str, float]:
    """Parameter counts and sizes of a model and its artifact (metric names from metrics)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {M.PARAMS: params, M.NONZERO_PARAMS: nonzero, M.DENSE_FP32_BYTES: 4 * params,
            M.SIZE_BYTES: len(artifact), M.COMPRESSION_RATIO: 4 * params / len(artifact),
            **byte_breakdown(artifact)}
