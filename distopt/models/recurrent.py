"""The recurrent family (``rnn``: Elman, GRU or LSTM cells): :class:`RecurrentNet` on token
ids or on image rows (sequential MNIST), and the family that describes it from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distopt.models.convnet import dense_head
from distopt.models.family import Family, register_family
from distopt.models.spec import ModelSpec

if TYPE_CHECKING:
    from distopt.config import Config

__all__ = ["CELLS", "GATES", "RecurrentFamily", "RecurrentNet", "seed_rnn"]

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # row blocks of a recurrent weight matrix


def seed_rnn(tokens: bool = True, dropout: float = 0.0) -> ModelSpec:
    """The seed's Keras RNN: Embedding(5000, 128) -> SimpleRNN(128, return_sequences=True) ->
    SimpleRNN(128) -> Dense(10). ``tokens=False``: the same on 28 rows of 28 pixels (sequential
    MNIST), without the embedding.

    Keras counts 707,082 parameters; PyTorch's cells carry a second bias vector (``b_hh``), so
    this model has 128 more per layer: 707,338."""
    if tokens:
        return ModelSpec("rnn", (64,), 10, (), (), 3, dropout, "rnn", (128, 128), 5000, 128)
    return ModelSpec("rnn", (1, 28, 28), 10, (), (), 3, dropout, "rnn", (128, 128))


class RecurrentNet(nn.Module):
    """[Embedding ->] stacked single-layer recurrent cells -> dense head on the last step.

    Token ids ``(B, L)`` go through the embedding; images ``(B, C, H, W)`` are read as ``H``
    steps of ``C * W`` features (sequential MNIST). Each layer is its own module so that
    structured pruning can give every layer its own width; dropout sits between layers and
    before the head, like Keras' stacked ``SimpleRNN`` with ``Dropout`` layers."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embedding = nn.Embedding(spec.vocab_size, spec.embed_dim) if spec.tokens else None
        if self.embedding is not None:
            # Keras' initializer (uniform +-0.05), not PyTorch's N(0, 1): with N(0, 1) the rows
            # of ids never seen stay larger than every trained recurrent weight, and global
            # magnitude pruning would remove the recurrent layers before the unused rows.
            nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        n = spec.embed_dim if spec.tokens else spec.in_shape[0] * spec.in_shape[2]
        layers = []
        for units in spec.rnn_units:
            layers.append(CELLS[spec.cell](n, units, batch_first=True))
            n = units
        self.recurrent = nn.ModuleList(layers)
        self.drop = nn.Dropout(spec.dropout)
        self.classifier = dense_head(n, spec.dense_units, spec.num_classes, spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            h = self.embedding(x)  # (B, L, E)
        else:
            b, c, rows, w = x.shape
            h = x.permute(0, 2, 1, 3).reshape(b, rows, c * w)  # one step per pixel row
        for i, layer in enumerate(self.recurrent):
            if i:
                h = self.drop(h)
            if h.is_cuda:
                layer.flatten_parameters()  # cuDNN wants one weight buffer after pruning/DDP
            h, _ = layer(h)
        return self.classifier(h[:, -1])  # (B, num_classes)



@register_family
class RecurrentFamily(Family):
    """``rnn``: ``model.blocks`` stacked cells of ``model.hidden_size`` + dense head; on token
    ids with an embedding of ``model.embed_dim``."""

    name = "rnn"

    def spec(self, cfg: Config) -> ModelSpec:
        m, d = cfg.model, cfg.data
        tokens = d.kind == "tokens"
        return ModelSpec(self.name, (d.max_len,) if tokens else
                         tuple(int(v) for v in d.model_shape), d.num_classes, (),
                         m.dense_widths(m.dense_layers), 3, cfg.regularization.dropout,
                         m.cell, (m.hidden_size,) * m.blocks, d.vocab_size if tokens else 0,
                         m.embed_dim if tokens else 0)

    def build(self, spec: ModelSpec) -> RecurrentNet:
        return RecurrentNet(spec)
