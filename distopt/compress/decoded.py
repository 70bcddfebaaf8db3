"""What every version's reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from distopt.models import Model

__all__ = ["Decoded"]


@dataclass(frozen=True)
class Decoded:
    """A decoded artifact: the model (weights = codes x scales, exactly as stored), the file's
    meta and tensor entries, and, for every quantized weight, its integer codes (the tensor's
    shape) and float32 scales (one per row, or per column for ``axis`` 1), which exporters
    need to write the same numbers in another format. ``integer``: the integer reference
    (:class:`distopt.compress.integer.IntegerNet`) of a file with 8-bit activations, else
    None; :attr:`reference` is the model every accuracy of the file is measured on."""

    model: Model
    meta: dict[str, Any]
    tensors: list[dict[str, Any]]
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    integer: nn.Module | None = None

    @property
    def reference(self) -> nn.Module:
        """What the file computes on its device: the integer reference of an integer model,
        else the decoded float model."""
        return self.integer if self.integer is not None else self.model
