"""The concrete architecture of a model (:class:`ModelSpec`): every layer's width, the input it
takes, the family that builds it. The config describes a family of specs; structured weight
pruning produces a narrower one; the artifact stores it, so a file alone rebuilds its model.
No torch here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from distopt.shapes import conv_out_side
from distopt.user_models import is_factory_path

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    family: Literal["cnn", "conv1d", "mlp", "rnn", "recsys", "external"]
    # images: (C, H, W); 1-D signals: (C, 1, L); tokens: (max_len,); tabular rows: (columns,)
    in_shape: tuple[int, ...]
    num_classes: int
    conv_channels: tuple[int, ...] = ()  # cnn, conv1d: one conv 'valid' + max-pool 2 per entry
    dense_units: tuple[int, ...] = ()  # hidden dense layers before the classifier
    kernel_size: int = 3
    dropout: float = 0.0
    cell: Literal["rnn", "gru", "lstm"] = "rnn"
    rnn_units: tuple[int, ...] = ()  # rnn: hidden size of each stacked recurrent layer
    vocab_size: int = 0  # rnn on tokens: embedding rows; 0 = no embedding (image rows)
    embed_dim: int = 0
    batch_norm: bool = False  # cnn: BatchNorm after each conv (folded away before export)
    head: Literal["flatten", "gap"] = "flatten"  # cnn: flatten or global-average-pool features
    block: Literal["plain", "same", "separable", "depthwise", "bitnet"] = "plain"  # cnn, conv1d: conv block kind
    bias: bool = True  # cnn, conv1d, mlp: conv and dense layers with biases (False: none)
    buckets: tuple[int, ...] = ()  # recsys: rows of each categorical column's embedding table
    interaction: Literal["mlp", "dot"] = "mlp"  # recsys: concatenation or pairwise dots
    # external: the user's factory ("package.module:Name") and its options (the config's model
    # section as sorted (key, value) pairs); see distopt.user_models.
    factory: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.factory:  # built-in families: the dict (and every file) as before
            del d["factory"], d["options"]
        if self.bias:  # written only when off, so files of biased models are as before
            del d["bias"]
        if self.family != "recsys":  # the keys of a later family: other files as before
            del d["buckets"], d["interaction"]
        return d

    @classmethod
    def external(cls, factory: str, in_shape: tuple[int, ...], num_classes: int,
                 options: dict[str, Any] | None = None) -> ModelSpec:
        """The spec of a model built by ``factory(options, in_shape, num_classes)``
        (:mod:`distopt.user_models`): ``distopt.build_model`` builds it, ``distopt.encode``
        stores it, and decoding rebuilds it where the factory's path is trusted."""
        if not is_factory_path(factory):
            raise ValueError(f"factory: got {factory!r}; expected 'package.module:Name'")
        return cls("external", tuple(in_shape), num_classes, factory=factory,
                   options=tuple(sorted((options or {}).items())))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(family=d["family"], in_shape=tuple(int(v) for v in d["in_shape"]),
                   num_classes=int(d["num_classes"]),
                   conv_channels=tuple(int(c) for c in d["conv_channels"]),
                   dense_units=tuple(int(u) for u in d["dense_units"]),
                   kernel_size=int(d["kernel_size"]), dropout=float(d["dropout"]),
                   cell=d.get("cell", "rnn"),
                   rnn_units=tuple(int(u) for u in d.get("rnn_units", ())),
                   vocab_size=int(d.get("vocab_size", 0)), embed_dim=int(d.get("embed_dim", 0)),
                   batch_norm=bool(d.get("batch_norm", False)), head=d.get("head", "flatten"),
                   block=d.get("block", "plain"), bias=bool(d.get("bias", True)),
                   buckets=tuple(int(b) for b in d.get("buckets", ())),
                   interaction=d.get("interaction", "mlp"),
                   factory=str(d.get("factory", "")),
                   options=tuple((str(k), v) for k, v in d.get("options", ())))

    @property
    def tokens(self) -> bool:
        return self.vocab_size > 0

    @property
    def conv_kernel(self) -> tuple[int, int]:
        """The (height, width) of every conv kernel and pooling window's extent: a 1-D
        convolution (``conv1d``) runs along L only, as a 2-D one of height 1."""
        return (1, self.kernel_size) if self.family == "conv1d" else \
            (self.kernel_size, self.kernel_size)

    @property
    def pool(self) -> tuple[int, int]:
        return (1, 2) if self.family == "conv1d" else (2, 2)

    def conv_out_side(self) -> tuple[int, int]:
        h, w = self.in_shape[1:]
        return conv_out_side(h, w, len(self.conv_channels), self.conv_kernel, self.pool,
                             self.block)
