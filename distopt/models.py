"""Model families as plain PyTorch modules. Nothing here knows of Ray or Optuna.

A :class:`ModelSpec` is the concrete architecture (every layer's width). The config describes a
family of them; structured weight pruning produces a narrower spec; the artifact stores the spec
so that a file alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from distopt.config import Config
from distopt.shapes import BLOCKS, conv_out_side
from distopt.user_models import is_factory_path, load_factory

__all__ = ["ModelSpec", "Net", "RecurrentNet", "build_model", "spec_from_config", "seed_cnn",
           "seed_rnn", "Model", "count_params", "fold_batch_norm", "layer_kinds",
           "prunable_weights", "example_input"]

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # row blocks of a recurrent weight matrix


@dataclass(frozen=True)
class ModelSpec:
    family: Literal["cnn", "conv1d", "mlp", "rnn", "external"]
    in_shape: tuple[int, ...]  # images: (C, H, W); 1-D signals: (C, 1, L); tokens: (max_len,)
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
    block: Literal["plain", "same", "separable"] = "plain"  # cnn, conv1d: conv block kind
    # external: the user's factory ("package.module:Name") and its options (the config's model
    # section as sorted (key, value) pairs); see distopt.user_models.
    factory: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.factory:  # built-in families: the dict (and every file) as before
            del d["factory"], d["options"]
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
                   block=d.get("block", "plain"), factory=str(d.get("factory", "")),
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


def spec_from_config(cfg: Config) -> ModelSpec:
    m, d = cfg.model, cfg.data
    in_shape = tuple(int(v) for v in d.model_shape)  # data.resize applied
    if is_factory_path(m.family):
        options = {k: v for k, v in dataclasses.asdict(m).items() if k not in ("family", "preset")}
        options["dropout"] = cfg.regularization.dropout
        tokens = d.kind == "tokens"
        spec = ModelSpec.external(m.family, (d.max_len,) if tokens else in_shape, d.num_classes,
                                  options)
        # Token ids in: the spec says so (example inputs, latency, exports take integers).
        return dataclasses.replace(spec, vocab_size=d.vocab_size, embed_dim=1) if tokens \
            else spec
    if m.family == "rnn":
        tokens = d.kind == "tokens"
        return ModelSpec("rnn", (d.max_len,) if tokens else in_shape, d.num_classes, (),
                         (m.dense_units,) * m.dense_layers, 3, cfg.regularization.dropout,
                         m.cell, (m.hidden_size,) * m.blocks, d.vocab_size if tokens else 0,
                         m.embed_dim if tokens else 0)
    if m.family in ("cnn", "conv1d"):
        return ModelSpec(m.family, in_shape, d.num_classes,
                         tuple(m.channels * 2 ** i for i in range(m.blocks)),
                         (m.dense_units,) * m.dense_layers, m.kernel_size,
                         cfg.regularization.dropout, batch_norm=m.batch_norm, head=m.head,
                         block=m.block)
    return ModelSpec("mlp", in_shape, d.num_classes, (), (m.dense_units,) * m.blocks, 3,
                     cfg.regularization.dropout)


def seed_cnn(dropout: float = 0.0) -> ModelSpec:
    """The seed's Keras CNN: Conv32-Conv64 (3x3 valid, each + max-pool 2), Dense128, 10 classes.

    225,034 parameters."""
    return ModelSpec("cnn", (1, 28, 28), 10, (32, 64), (128,), 3, dropout)


def seed_rnn(tokens: bool = True, dropout: float = 0.0) -> ModelSpec:
    """The seed's Keras RNN: Embedding(5000, 128) -> SimpleRNN(128, return_sequences=True) ->
    SimpleRNN(128) -> Dense(10). ``tokens=False``: the same on 28 rows of 28 pixels (sequential
    MNIST), without the embedding.

    Keras counts 707,082 parameters; PyTorch's cells carry a second bias vector (``b_hh``), so
    this model has 128 more per layer: 707,338."""
    if tokens:
        return ModelSpec("rnn", (64,), 10, (), (), 3, dropout, "rnn", (128, 128), 5000, 128)
    return ModelSpec("rnn", (1, 28, 28), 10, (), (), 3, dropout, "rnn", (128, 128))


def _head(n: int, units: tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    dense: list[nn.Module] = [nn.Flatten()]
    for u in units:
        dense += [nn.Dropout(dropout), nn.Linear(n, u), nn.ReLU(inplace=True)]
        n = u
    dense += [nn.Dropout(dropout), nn.Linear(n, num_classes)]
    return nn.Sequential(*dense)


class Net(nn.Module):
    """Conv blocks (conv -> [BatchNorm] -> ReLU -> max-pool 2), then either the flattened
    features or their global average per channel (``head: gap``), then dense layers with
    dropout. Family ``mlp`` has no conv blocks.

    Block kinds (``spec.block``): ``plain`` convs are 'valid' (the seed's); ``same`` convs pad
    ``k // 2`` so that only pooling shrinks the map (more blocks fit a small input);
    ``separable`` blocks after the first are depthwise-separable (MobileNet): a ``k x k``
    depthwise conv (one filter per channel, 'same', no bias) then a ``1 x 1`` pointwise conv,
    about
    ``k * k`` times fewer weights than a full conv; the first block stays a full 'same' conv
    (a depthwise conv of a one-channel image would learn a single filter).

    Family ``conv1d`` is the same network for 1-D signals ``(C, 1, L)``: kernels ``1 x k`` and
    pooling ``1 x 2`` run along L only. Keeping them ``Conv2d`` of height 1 (the same function
    as ``Conv1d``) lets weight pruning, quantization, the artifact and ONNX export treat both
    families alike.

    Layers sit in two flat ``nn.Sequential``s so that weight pruning and the artifact can walk
    (conv_i, dense_j) by index."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.in_shape[0]
        kernel = spec.conv_kernel
        pad = (0, 0) if spec.block == "plain" else (kernel[0] // 2, kernel[1] // 2)
        convs: list[nn.Module] = []
        for i, out in enumerate(spec.conv_channels):
            if spec.block == "separable" and i > 0:
                # No bias on the depthwise conv: with nothing non-linear before the pointwise
                # conv, the pointwise bias absorbs it (and the file stores fewer floats).
                convs += [nn.Conv2d(c, c, kernel, padding=pad, groups=c, bias=False),
                          nn.Conv2d(c, out, 1)]
            else:
                convs.append(nn.Conv2d(c, out, kernel, padding=pad))
            if spec.batch_norm:
                convs.append(nn.BatchNorm2d(out))
            convs += [nn.ReLU(inplace=True), nn.MaxPool2d(spec.pool)]
            c = out
        if spec.head == "gap" and spec.conv_channels:
            convs.append(nn.AdaptiveAvgPool2d(1))  # (B, C, 1, 1): one value per channel
            h = w = 1
        else:
            h, w = spec.conv_out_side() if spec.conv_channels else spec.in_shape[1:]
        self.features = nn.Sequential(*convs)
        self.classifier = _head(c * h * w, spec.dense_units, spec.num_classes, spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.classifier(self.features(x))  # (B, num_classes)


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
        self.classifier = _head(n, spec.dense_units, spec.num_classes, spec.dropout)

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


Model = Net | RecurrentNet


def build_model(spec: ModelSpec) -> Model:
    if spec.family == "external":
        return _build_external(spec)
    return RecurrentNet(spec) if spec.family == "rnn" else Net(spec)


def _build_external(spec: ModelSpec) -> Model:
    """The user's model (:mod:`distopt.user_models`), with ``spec`` attached as the built-in
    families carry theirs (the artifact stores it; decoding rebuilds from it)."""
    model = load_factory(spec.factory)(dict(spec.options), tuple(spec.in_shape), spec.num_classes)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec.factory} returned a {type(model).__name__}, not a "
                        "torch.nn.Module")
    model.spec = spec
    return model  # type: ignore[return-value]


@torch.no_grad()
def fold_batch_norm(model: Net) -> Net:
    """The same function without BatchNorm: each BN's running statistics and affine parameters
    folded into the preceding conv (``w * g / s``, ``(b - mean) * g / s + beta`` with
    ``s = sqrt(var + eps)``). Exact in eval mode; what pruning fine-tunes and what the artifact
    stores, so the decoded file reproduces it."""
    if not model.spec.batch_norm:
        return model
    new = Net(dataclasses.replace(model.spec, batch_norm=False))
    # Each BatchNorm folds into the conv just before it (the pointwise one of a separable
    # block); convs without one are copied.
    new_convs = iter(m for m in new.features if isinstance(m, nn.Conv2d))
    last: tuple[nn.Conv2d, nn.Conv2d] | None = None
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            last = (m, next(new_convs))
            last[1].weight.copy_(m.weight)
            if m.bias is not None:
                last[1].bias.copy_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and last is not None:
            conv, dst = last
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            dst.weight.copy_(conv.weight * scale[:, None, None, None])
            dst.bias.copy_((conv.bias - m.running_mean) * scale + m.bias)
    new.classifier.load_state_dict(model.classifier.state_dict())
    return new.train(model.training)


def example_input(spec: ModelSpec, batch: int = 1) -> torch.Tensor:
    """A zero input batch of the model's input shape and dtype (token ids are integers)."""
    if spec.tokens:
        return torch.zeros(batch, *spec.in_shape, dtype=torch.long)
    return torch.zeros(batch, *spec.in_shape)


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """The kind of every weight :func:`prunable_weights` lists, for mixed bit widths:
    ``first_conv`` (the first conv layer), ``conv`` (the others), ``classifier`` (the last
    dense layer) and ``dense`` (hidden dense layers; recurrent and embedding weights)."""
    names = [name for name, _, _ in prunable_weights(model)]
    convs = [f"{p}.weight" for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    denses = [f"{p}.weight" for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    kinds = {}
    for name in names:
        if convs and name == convs[0]:
            kinds[name] = "first_conv"
        elif name in convs:
            kinds[name] = "conv"
        elif denses and name == denses[-1]:
            kinds[name] = "classifier"
        else:
            kinds[name] = "dense"
    return kinds


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """The weight matrices that are pruned, L1-penalized and quantized, in forward order, as
    ``(parameter name, parameter, quantization axis)``: conv, dense and recurrent weights get
    one scale per output row (axis 0); embeddings one per dimension (axis 1), because a scale
    per vocabulary row would cost more than the rows' 8-bit values save. Biases are excluded."""
    out = []
    for prefix, m in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out.append((f"{dot}weight", m.weight, 0))
        elif isinstance(m, nn.Embedding):
            out.append((f"{dot}weight", m.weight, 1))
        elif isinstance(m, nn.RNNBase):
            for name, p in m.named_parameters():
                if name.startswith("weight_"):
                    out.append((f"{dot}{name}", p, 0))
    return out
