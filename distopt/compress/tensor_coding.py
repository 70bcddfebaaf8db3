"""The protocol of format v2/v3's per-tensor codings (:mod:`distopt.compress.codings`): what
one coding writes and reads, and the registry of codings by id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from distopt.compress.wrapper import Reader

__all__ = ["CODINGS", "Coded", "SectionReaders", "TensorCoding", "register_coding"]


@dataclass
class Coded:
    """One tensor, coded: its header fields and its bytes in three sections."""

    fields: list[int]
    index: bytes = b""
    scales: bytes = b""
    values: list[tuple[np.ndarray, int]] | bytes = b""  # (symbols, width) or raw bytes


@dataclass
class SectionReaders:
    """Bounds-checked readers of the decompressed index, scales-and-biases and values
    sections; ``byte_layout``: the values section holds sub-byte symbols one per byte."""

    index: Reader
    scales: Reader
    values: Reader
    byte_layout: bool


class TensorCoding:
    """The protocol; one subclass per coding id, registered with :func:`register_coding`."""

    id: ClassVar[int]
    name: ClassVar[str]
    for_weights: ClassVar[bool]  # weights (quantizable) or the other tensors (biases)

    @classmethod
    def encode(cls, a: np.ndarray, axis: int, coding: Any) -> Coded:
        raise NotImplementedError

    @classmethod
    def problem(cls, fields: list[int], name: str, n: int, rows: int | None) -> str | None:
        raise NotImplementedError

    @classmethod
    def sizes(cls, fields: list[int], n: int, rows: int | None, byte_layout: bool
              ) -> tuple[int, int, int]:
        raise NotImplementedError

    @classmethod
    def decode(cls, fields: list[int], name: str, shape: tuple[int, ...], axis: int,
               readers: SectionReaders) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None,
                                                 dict[str, Any]]:
        """(float32 values of ``shape``, integer codes and scales or None, the tensor's entry
        for :attr:`~distopt.compress.decoded.Decoded.tensors`); raises
        :class:`~distopt.compress.codecs.CodingError` for bytes that do not fit the fields."""
        raise NotImplementedError


CODINGS: dict[int, type[TensorCoding]] = {}


def register_coding(cls: type[TensorCoding]) -> type[TensorCoding]:
    if cls.id in CODINGS:
        raise ValueError(f"coding id {cls.id} is taken by {CODINGS[cls.id].name!r}")
    CODINGS[cls.id] = cls
    return cls
