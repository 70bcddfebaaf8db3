"""Artifact format v1 against v2 on the same weights, and where v2's saving comes from.

For each ``.dopt`` file given (any version), the decoded model is written in both formats (same
integer codes; v2's float16 scales and biases are exact in v1's float32, so both files decode
to identical parameters, which is checked; a v1 file's float32 biases are first rounded to
float16 as v2 stores them). Each part of the file is then compared as that
format stores it, every part compressed on its own with the best of the same codecs, so the
parts are comparable and the saving can be traced:

- **header**: v1's JSON (names, shapes, full spec, meta with long floats) vs v2's compact one;
- **index**: v1's bitmask of non-zero weights vs v2's per-tensor choice (none, bitmask, Rice);
- **scales+biases**: float32 vs v2's float16;
- **values**: v1's non-zero codes (4-bit pairs, bytes, int16) vs v2's symbols (zeros rounded
  away by quantization dropped too, fewest bits, or one per byte).

v1's real file compresses its parts jointly, so its parts do not add up to its length exactly;
v2's do (its sections are compressed apart).

    python benchmarks/format_v2.py FILE.dopt [FILE.dopt ...] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import lzma
import math
import sys
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.compress import artifact as A  # noqa: E402
from distopt.compress import format_v1 as V1  # noqa: E402
from distopt.compress import sections as S  # noqa: E402
from distopt.compress import wrapper as W  # noqa: E402
from distopt.compress import decode, encode  # noqa: E402

PARTS = ("header", "index", "scales+biases", "values")
HEADERS = ["file", "bits", "non-zero", "v1 bytes", "v2 bytes", "saved"] + \
    [f"{p} v1 -> v2" for p in PARTS]


def _best(raw: bytes) -> int:
    """Bytes of ``raw`` compressed on its own by the best of none, zlib and LZMA."""
    if not raw:
        return 0
    return min(len(raw), len(zlib.compress(raw, 9)),
               len(lzma.compress(raw, format=lzma.FORMAT_RAW,
                                 filters=S.lzma_filters(len(raw), False))))


def v1_parts(data: bytes) -> dict[str, int]:
    """A v1 file's parts, each compressed alone: its JSON header, bitmasks, float32 scales and
    biases, and non-zero values."""
    codec, header = V1._read_header(data, "v1")
    hlen = header.pop("hlen")
    raw = W.inflate(data[W.PREAMBLE.size:-4], codec, 1 << 30, "v1")
    body = memoryview(raw)[4 + hlen:]
    parts = {p: b"" for p in PARTS}
    parts["header"] = bytes(raw[:4 + hlen])
    pos = 0
    for e in header["tensors"]:
        n = math.prod(e["shape"])
        nz = n
        if e["sparse"]:
            mask = bytes(body[pos:pos + (n + 7) // 8])
            parts["index"] += mask
            nz = int(np.unpackbits(np.frombuffer(mask, np.uint8))[:n].sum())
            pos += len(mask)
        if e["bits"] == 32:
            size = 4 * nz
            key = "values" if "weight" in e["name"] else "scales+biases"
        else:
            rows = e["shape"][e.get("axis", 0)]
            parts["scales+biases"] += bytes(body[pos:pos + 4 * rows])
            pos += 4 * rows
            size = {16: 2 * nz, 8: nz, 4: (nz + 1) // 2}[e["bits"]]
            key = "values"
        parts[key] += bytes(body[pos:pos + size])
        pos += size
    return {p: _best(v) for p, v in parts.items()}


def compare(path: Path) -> dict[str, Any]:
    d = decode(path.read_bytes(), str(path))
    widths = {e["name"]: e["bits"] for e in d.tensors if e["name"] in d.codes}
    if set(widths.values()) & {3, 2}:
        raise SystemExit(f"{path}: 3-bit or ternary weights, which format v1 cannot hold")
    bits = max(widths.values(), default=32)
    # The weights as v2 stores them (a v1 file's float32 biases become float16 once); a v2
    # file is its own fixed point. v1 then holds exactly these numbers.
    d = decode(encode(d.model, bits, d.meta, weight_bits=widths))
    v2 = encode(d.model, bits, d.meta, weight_bits=widths)
    v1 = encode(d.model, bits, d.meta, weight_bits=widths, version=1)
    a, b = decode(v1).model.state_dict(), decode(v2).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{path}: v1 and v2 decode differently"
    split = A.byte_breakdown(v2)
    v2_parts = dict(zip(PARTS, (split[M.BYTES_HEADER], split[M.BYTES_INDEX],
                                split[M.BYTES_SCALES], split[M.BYTES_VALUES])))
    nonzero = sum(int((q != 0).sum()) for q, _ in d.codes.values())
    return {"file": path.name, "bits": "/".join(str(w) for w in sorted(set(widths.values()))),
            "nonzero": nonzero, "v1_bytes": len(v1), "v2_bytes": len(v2),
            "v1_parts": v1_parts(v1), "v2_parts": v2_parts}


def markdown(payload: dict[str, Any]) -> str:
    rows = [[r["file"], r["bits"], f"{r['nonzero']:,}", f"{r['v1_bytes']:,}",
             f"{r['v2_bytes']:,}", f"{1 - r['v2_bytes'] / r['v1_bytes']:.0%}"]
            + [f"{r['v1_parts'][p]:,} -> {r['v2_parts'][p]:,}" for p in PARTS]
            for r in payload["files"]]
    return table(HEADERS, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    payload = {"command": "python benchmarks/format_v2.py " + " ".join(map(str, args.files)),
               "files": [compare(p) for p in args.files]}
    print(markdown(payload))
    print(f"wrote {write('format_v2', payload, args.out)}")


if __name__ == "__main__":
    main()
