"""What a weight tensor is coded as in the artifact, as plain data that compression methods
hand to the encoder (:meth:`~distopt.compress.method.CompressionMethod.claim_codings`). The
file format maps each kind to its coding id and bytes (:mod:`distopt.compress.codings`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Codebook", "Coding", "IntCodes"]


@dataclass(frozen=True)
class Coding:
    """Base of the per-tensor codings."""


@dataclass(frozen=True)
class IntCodes(Coding):
    """Symmetric integer codes times a per-row scale (16, 8, 4, 3 bits; 2 = ternary), or the
    float32 values themselves at 32 bits; ``per_tensor``: one scale for the whole tensor
    (below 32 bits); ``odd``: ``2**bits`` odd levels without a zero (4 bits or fewer)."""

    bits: int
    per_tensor: bool = False
    odd: bool = False


@dataclass(frozen=True)
class Codebook(Coding):
    """Weight sharing: every stored weight is one of ``size`` shared values (centroids), kept
    once per tensor; each weight stores the index of its value."""

    size: int
