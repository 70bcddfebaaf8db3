"""What a device keeps in flash to run a decoded artifact in place: ``flash_bytes``, and of
those, the packed weight codes alone (``weight_flash_bytes``, the unit BitNetMCU and most
tiny-model papers quote).

The executor counted is the one such papers assume: every weight tensor is read from flash as
it is stored, packed at its bit width (no entropy coding, no sparse index: a dense kernel, so a
pruned weight costs its code like any other), and the float parts it needs beside the codes
are float32. Per tensor, by its coding in the file:

- integer codes at ``b`` < 32 bits (``b`` = 2: ternary): ``ceil(n * b / 8)`` bytes of codes,
  plus one float32 scale per output channel (per column for embeddings, ``axis`` 1), or one
  for the tensor where the file keeps one (``compress.quantize.scales: tensor``);
- a codebook (weight clustering): its values as float32, with a zero among them where the
  file keeps pruned weights apart (a dense kernel indexes them too), and ``ceil(n * b / 8)``
  bytes of indices, ``b`` the bits that index that many values (:func:`codebook_layout`);
- float weights (``b`` = 32) and every other tensor (biases): float32, 4 bytes a value.

Integer models (8-bit activations, :mod:`distopt.compress.integer`) keep no float: beside each
weight tensor's packed codes, one int32 multiplier and one int8 shift per output channel
(:data:`REQUANT_BYTES`; one per tensor with a per-tensor scale) replace the float32 scale,
and biases are int32 (4 bytes a value, as float32 ones). The per-layer zero points and clamps
are immediates in the code.

Not counted: the executor's code, the graph or layer table, alignment padding, and the
activation buffers (RAM, :mod:`distopt.models.cost`). Reads only the file's tensor entries.
"""

from __future__ import annotations

import math
from typing import Any, Collection, Iterable, Mapping

from distopt import metrics as M

__all__ = ["FLOAT_BYTES", "REQUANT_BYTES", "codebook_layout", "flash_bytes", "tensor_flash"]

FLOAT_BYTES = 4  # a float32 value (weights at 32 bits, scales, biases, codebook values)
REQUANT_BYTES = 5  # an integer model's output channel: int32 multiplier + int8 shift


def codebook_layout(entry: Mapping[str, Any]) -> tuple[int, int]:
    """(values, index bits) of a codebook tensor as a device keeps it: the file's values, plus
    a zero where the file stores pruned weights in its sparse index rather than the
    codebook."""
    values = int(entry["codebook_size"]) + (1 if entry.get("sparse") else 0)
    return values, max(1, math.ceil(math.log2(values)))


def tensor_flash(entry: Mapping[str, Any], integer: bool = False) -> tuple[int, int]:
    """(bytes of packed weight codes, bytes of the values beside them: scales, or an integer
    model's requantization constants; biases) of one tensor entry of a decoded file
    (``Decoded.tensors``)."""
    n = math.prod(int(s) for s in entry["shape"])
    bits = int(entry["bits"])
    is_weight = "index" in entry  # weights carry an index coding; biases do not
    if not is_weight or (bits >= 32 and entry.get("coding") != "codebook"):
        return (n * FLOAT_BYTES, 0) if is_weight else (0, n * FLOAT_BYTES)
    if entry.get("coding") == "codebook":
        values, index_bits = codebook_layout(entry)
        return math.ceil(n * index_bits / 8), values * FLOAT_BYTES
    codes = math.ceil(n * bits / 8)
    per_tensor = entry.get("scales") == "tensor"
    scales = 1 if per_tensor else int(entry["shape"][int(entry.get("axis", 0))])
    return codes, scales * (REQUANT_BYTES if integer else FLOAT_BYTES)


def flash_bytes(tensors: Iterable[Mapping[str, Any]], integer: bool = False,
                embeddings: Collection[str] = ()) -> dict[str, int]:
    """``flash_bytes`` (everything counted above) and ``weight_flash_bytes`` (the packed
    weight codes alone) of a decoded file's tensor entries; ``integer``: of an integer model;
    ``embedding_flash_bytes``: of those, the tensors named in ``embeddings`` (tables)."""
    codes = other = tables = 0
    for entry in tensors:
        c, o = tensor_flash(entry, integer)
        codes, other = codes + c, other + o
        if entry["name"] in embeddings:
            tables += c + o
    return {M.FLASH_BYTES: codes + other, M.WEIGHT_FLASH_BYTES: codes,
            M.EMBEDDING_FLASH_BYTES: tables}
