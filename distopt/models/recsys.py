"""The recommendation family (``recsys``): :class:`RecsysNet`, one embedding table per
categorical column, the numeric columns through one dense layer, then an MLP over their
concatenation or over DLRM's pairwise dot products (:class:`PairwiseDot`); and the family that
describes it from the config. Nearly all of its bytes are embedding rows, which is what its
compression knobs (rows per table, dimension, row bits, row pruning) trade."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distopt.models.convnet import dense_head
from distopt.models.family import Family, register_family
from distopt.models.spec import ModelSpec

if TYPE_CHECKING:
    from distopt.config import Config

__all__ = ["PairwiseDot", "RecsysFamily", "RecsysNet", "fold_ids"]


def fold_ids(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """Bucket ids onto a table of ``rows`` rows: 0 (out of vocabulary) stays 0, every other id
    ``1 + (id - 1) mod (rows - 1)``: the identity for ids below ``rows``, a second hash for
    the rest. What lets the search shrink a table without hashing the data again."""
    return torch.where(ids == 0, torch.zeros_like(ids), 1 + torch.remainder(ids - 1, rows - 1))


class PairwiseDot(nn.Module):
    """DLRM's interaction: the dot product of every pair of ``m`` vectors ``(B, m, d)`` ->
    ``(B, m (m - 1) / 2)``, pairs in row-major upper-triangle order. A module of its own, so
    that the cost model counts its multiply-accumulates and the ONNX writer finds it."""

    def __init__(self, m: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(m, m, offset=1)
        self.register_buffer("pairs", rows * m + cols, persistent=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(v, v.transpose(1, 2))  # (B, m, m)
        return gram.flatten(1)[:, self.pairs]


class RecsysNet(nn.Module):
    """Rows ``(B, k + n)``: ``k`` bucket ids (as float32), then ``n`` standardized numbers.

    Each id column is folded onto its table (:func:`fold_ids`) and looked up; the numbers go
    through ``Linear(n, d)`` + ReLU (DLRM's bottom MLP, one layer). ``interaction`` ``mlp``
    concatenates the ``k (+1)`` vectors of size ``d``; ``dot`` takes their pairwise dot
    products (beside the numeric vector). Then hidden dense layers and the classifier."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d, k = spec.embed_dim, len(spec.buckets)
        self.embeddings = nn.ModuleList(nn.Embedding(rows, d) for rows in spec.buckets)
        for table in self.embeddings:
            # Small rows at first (as the rnn's token table): rows no id trains stay the
            # smallest, so row pruning removes them before any row that learned something.
            nn.init.uniform_(table.weight, -0.05, 0.05)
        n_num = spec.in_shape[0] - k
        self.numeric = nn.Sequential(nn.Linear(n_num, d), nn.ReLU()) if n_num else None
        m = k + (1 if n_num else 0)
        if spec.interaction == "dot":
            self.interact: PairwiseDot | None = PairwiseDot(m)
            width = m * (m - 1) // 2 + (d if n_num else 0)
        else:
            self.interact = None
            width = m * d
        self.classifier = dense_head(width, spec.dense_units, spec.num_classes, spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.embeddings)
        ids = x[:, :k].long()
        vectors = [table(fold_ids(ids[:, i], table.num_embeddings))
                   for i, table in enumerate(self.embeddings)]
        dense = self.numeric(x[:, k:]) if self.numeric is not None else None
        if dense is not None:
            vectors.append(dense)
        if self.interact is None:
            h = torch.cat(vectors, 1)
        else:
            pairs = self.interact(torch.stack(vectors, 1))
            h = torch.cat([pairs, dense], 1) if dense is not None else pairs
        return self.classifier(h)


@register_family
class RecsysFamily(Family):
    """``recsys``: a table of ``model.buckets`` rows (at most its column's hash buckets,
    ``data.column_buckets`` or ``data.num_buckets``) and
    ``model.embed_dim`` columns per categorical column, ``model.interaction``, and
    ``model.dense_layers`` hidden layers of ``model.dense_units``."""

    name = "recsys"

    def spec(self, cfg: Config) -> ModelSpec:
        m, d = cfg.model, cfg.data
        return ModelSpec(self.name, (len(d.categorical) + len(d.numeric),), d.num_classes,
                         (), m.dense_widths(m.dense_layers), 3, cfg.regularization.dropout,
                         embed_dim=m.embed_dim,
                         buckets=tuple(min(m.buckets, b) for b in d.buckets_of),
                         interaction=m.interaction)

    def build(self, spec: ModelSpec) -> RecsysNet:
        return RecsysNet(spec)
