"""Format versions 2 and 3 of the ``.dopt`` artifact: the body is four sections
(:mod:`distopt.compress.sections`) filled by per-tensor codings (:mod:`distopt.compress.codings`).

1. *header*: compact JSON of the model spec (non-default keys only), the meta, and one short
   entry per tensor in ``state_dict`` order (names and shapes follow from the spec);
2. *index*: where each sparse weight's stored values are (bitmask or Rice-coded gaps);
3. *scales and biases*: per-row scales, codebooks, and the float tensors;
4. *values*: each weight's stored symbols, bit-packed or one per byte (bit 4 of the section's
   codec byte), or float32 for 32-bit weights.

**Version 3** writes each entry as ``[coding id, *fields]``, so a tensor may use any registered
coding (integer codes x scale, codebook, float, ...). **Version 2** has no coding ids: a weight's
entry is the integer coding's fields and any other tensor's the float coding's. The writer uses
version 2 whenever every tensor fits it (so such files stay byte-identical to what earlier
distopt wrote), version 3 only for codings version 2 lacks.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import torch

from distopt.compress import codecs as K
from distopt.compress.coding import Coding, IntCodes
from distopt.compress.codings import (CODINGS, FloatCoding, IntCoding, SectionReaders,
                                      TensorCoding, coding_class)
from distopt.compress.decoded import Decoded
from distopt.compress.quantization import float_bits
from distopt.compress.sections import (BYTE_LAYOUT, pack_section, section, sections,
                                       unpack_section)
from distopt.compress.spec_check import check_trust, expected_state, spec_problem
from distopt.compress.wrapper import MAX_HEADER_BYTES, MAX_PARAMS, ArtifactError, Reader, wrap
from distopt.models import Model, ModelSpec, build_model

__all__ = ["decode_v2", "encode_v2", "version_for"]

_SPEC_DEFAULTS = {k: (list(v) if isinstance(v, tuple) else v)
                  for k, v in ModelSpec("cnn", (1, 1, 1), 1).to_dict().items()
                  if k not in ("family", "in_shape", "num_classes")}


def version_for(codings: Mapping[str, Coding]) -> int:
    """The oldest version that holds these codings: 2 for integer codes only, else 3."""
    return 2 if all(isinstance(c, IntCodes) and not (c.per_tensor or c.odd)
                    for c in codings.values()) else 3


def encode_v2(model: Model, bits: int, meta: dict[str, Any], codings: Mapping[str, Coding],
              axes: dict[str, int], version: int) -> bytes:
    """``codings``: each weight's coding (default: integer codes at ``bits``); the other
    tensors are float16 beside quantized weights (``bits`` < 32), else float32."""
    fbits = float_bits(bits)
    entries: list[list[int]] = []
    index, params = [], []
    values: list[tuple[np.ndarray, int] | bytes] = []
    for name, t in model.state_dict().items():
        a = t.detach().float().contiguous().cpu().numpy()
        if name in axes:
            coding = codings.get(name, IntCodes(bits))
            file_coding = coding_class(coding)
            c = file_coding.encode(a, axes[name], coding)
        else:
            file_coding, c = FloatCoding, FloatCoding.encode(a, 0, fbits)
        entries.append(c.fields if version == 2 else [file_coding.id, *c.fields])
        index.append(c.index)
        params.append(c.scales)
        values.extend(c.values if isinstance(c.values, list) else [c.values])
    # The spec as inference needs it: non-default keys, no dropout (training only).
    spec = {k: v for k, v in model.spec.to_dict().items() if k != "dropout" and
            (k not in _SPEC_DEFAULTS or _jsonable(v) != _SPEC_DEFAULTS[k])}
    header = json.dumps({"spec": spec, "meta": _short_floats(meta), "t": entries},
                        separators=(",", ":")).encode()
    body = b""
    for raw in (header, b"".join(index), b"".join(params)):
        codec, stored = pack_section(raw)
        body += section(codec, len(raw), stored)
    # Values: bit-packed, or (when some symbols are narrower than a byte) one per byte, which
    # LZMA often models better; whichever ends smaller.
    layouts = {0: b"".join(v if isinstance(v, bytes) else K.pack_uint(*v) for v in values)}
    if any(not isinstance(v, bytes) and v[1] < 8 for v in values):
        layouts[BYTE_LAYOUT] = b"".join(
            v if isinstance(v, bytes) else
            v[0].astype(np.uint8).tobytes() if v[1] < 8 else K.pack_uint(*v) for v in values)
    packed = {flag: pack_section(raw, flag) for flag, raw in layouts.items()}
    flag = min(packed, key=lambda f: (len(packed[f][1]), f))
    body += section(packed[flag][0], len(layouts[flag]), packed[flag][1])
    return wrap(version, 0, body)


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


def _split_entry(e: Any, name: str, is_weight: bool, version: int
                 ) -> tuple[type[TensorCoding] | None, list[int], str | None]:
    """A header entry as (its coding, its fields), or why it is invalid."""
    if not isinstance(e, list) or not all(type(x) is int for x in e):
        return None, [], f"tensor {name!r}: entry {e!r} is not a list of integers"
    if version == 2:
        return (IntCoding if is_weight else FloatCoding), e, None
    if not e or e[0] not in CODINGS:
        return None, [], f"tensor {name!r}: unknown coding id {e[0] if e else None!r}"
    coding = CODINGS[e[0]]
    if coding.for_weights != is_weight:
        return None, [], f"tensor {name!r}: coding {coding.name!r} is not for " + \
            ("weights" if is_weight else "this tensor")
    return coding, e[1:], None


def decode_v2(data: bytes, source: str, version: int, trust_code: bool = False) -> Decoded:
    """Read a version-2 or -3 file: header checked against the spec's model before anything
    is built, each section decompressed to exactly what its tensors need."""
    secs = sections(data, source)
    header_sec = secs[0]
    if header_sec[1] > MAX_HEADER_BYTES:
        raise ArtifactError(f"{source}: header of {header_sec[1]} bytes is beyond the "
                            f"{MAX_HEADER_BYTES}-byte limit")
    raw_header = unpack_section(header_sec, header_sec[1], "header", source)
    try:
        header = json.loads(raw_header)
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{source}: header is not valid JSON ({e.__class__.__name__})") \
            from None
    if not isinstance(header, dict) or not isinstance(header.get("spec"), dict) or \
            not isinstance(header.get("t"), list) or not isinstance(header.get("meta", {}), dict):
        raise ArtifactError(f"{source}: header lacks its spec, tensors or meta")
    spec_d = {**_SPEC_DEFAULTS, **header["spec"]}
    problem = spec_problem(spec_d)
    if problem is None:
        check_trust(spec_d, source, trust_code)
        shapes, weights = expected_state(ModelSpec.from_dict(spec_d))
        n_params = sum(math.prod(s) for s in shapes.values())
        if n_params > MAX_PARAMS:
            problem = f"spec asks for {n_params:,} parameters; at most {MAX_PARAMS:,} are read"
        elif len(header["t"]) != len(shapes):
            problem = f"{len(header['t'])} tensor entries; the spec's model has " \
                      f"{len(shapes)} tensors"
    plan: list[tuple[str, tuple[int, ...], type[TensorCoding], list[int]]] = []
    if problem is None:
        for (name, shape), e in zip(shapes.items(), header["t"]):
            coding, fields, problem = _split_entry(e, name, name in weights, version)
            rows = shape[weights[name]] if name in weights else None
            problem = problem or coding.problem(fields, name, math.prod(shape), rows)  # type: ignore[union-attr]
            if problem:
                break
            plan.append((name, shape, coding, fields))  # type: ignore[arg-type]
    if problem:
        raise ArtifactError(f"{source}: invalid header: {problem}")
    byte_layout = bool(secs[3][0] & BYTE_LAYOUT)
    sizes = [0, 0, 0]  # index, scales and biases, values
    for name, shape, coding, fields in plan:
        rows = shape[weights[name]] if name in weights else None
        for i, size in enumerate(coding.sizes(fields, math.prod(shape), rows, byte_layout)):
            sizes[i] += size
    readers = SectionReaders(
        Reader(memoryview(unpack_section(secs[1], sizes[0], "index", source)), source),
        Reader(memoryview(unpack_section(secs[2], sizes[1], "scales and biases", source)),
               source),
        Reader(memoryview(unpack_section(secs[3], sizes[2], "values", source, BYTE_LAYOUT)),
               source),
        byte_layout)
    state: dict[str, torch.Tensor] = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tensors: list[dict[str, Any]] = []
    for name, shape, coding, fields in plan:
        try:
            values, tensor_codes, entry = coding.decode(fields, name, shape,
                                                        weights.get(name, 0), readers)
        except K.CodingError as err:
            raise ArtifactError(f"{source}: tensor {name!r}: {err}") from None
        state[name] = torch.from_numpy(np.ascontiguousarray(values, np.float32))
        if tensor_codes is not None:
            codes[name] = tensor_codes
        if version > 2:
            entry["coding"] = coding.name
        tensors.append(entry)
    model = build_model(ModelSpec.from_dict(spec_d))
    model.load_state_dict(state)
    model.eval()
    return Decoded(model, header.get("meta", {}), tensors, codes)
