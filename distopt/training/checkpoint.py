"""The epoch checkpoint's schema, written and read through the same names: what a run saves
after every epoch (rank 0) and resumes from.

The checkpoint travels as a plain dict (Ray Tune and Ray Train save it with ``torch.save`` and
restore it with ``weights_only=True``), so :meth:`Checkpoint.to_dict` and
:meth:`Checkpoint.from_dict` are the only places its keys are spelled. Compression methods add
their own top-level keys (pruning's ``masks``, clustering's ``clusters``:
:meth:`distopt.compress.method.CompressionMethod.checkpoint`), kept in :attr:`Checkpoint.methods`.
A checkpoint written before a key existed reads with that key's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

__all__ = ["Checkpoint"]


@dataclass
class Checkpoint:
    epoch: int  # the last epoch the state is after
    spec: dict[str, Any]  # the model's spec (structured pruning changes it)
    precision: str  # what the run trains in: a resumed run keeps it
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    dense_epochs: int | None = None  # train.epochs, or fewer after a validation plateau
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # fp16 loss scaling
    plateau: dict[str, float] = field(default_factory=dict)  # early stopping's best and count
    # Children fork from the dense weights: a fine-tune checkpoint keeps them.
    dense_model: dict[str, torch.Tensor] | None = None
    dense_spec: dict[str, Any] | None = None
    dense_history: list[dict[str, Any]] = field(default_factory=list)  # every dense epoch
    dense_source: str = ""  # the trial whose stored dense model this run adopted
    methods: dict[str, Any] = field(default_factory=dict)  # compression methods' own keys

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "methods"}
        return {**out, **self.methods}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        names = {f.name for f in fields(cls)} - {"methods"}
        known = {k: v for k, v in d.items() if k in names and v is not None}
        return cls(**known, methods={k: v for k, v in d.items() if k not in names})
