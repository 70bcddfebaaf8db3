"""The one typed, frozen configuration object, built from YAML plus dotted ``key=value`` overrides.

Every component receives a :class:`Config` (or the plain dict of one, across Ray processes).
Validation runs before Ray starts and reports every problem at once: each names the dotted key,
the value received and the rule broken, the way Optuna's errors do.

Each field declares its rule next to its default, so the rule text shown in an error is also
the rule documented in the README's config reference (``distopt config-reference``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import types
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import yaml

from distopt import metrics
from distopt.shapes import conv_out_side

__all__ = [
    "AugmentConfig",
    "CompressConfig",
    "CompressionPlan",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "RegularizationConfig",
    "SearchConfig",
    "TrainConfig",
    "load_config",
    "parse_overrides",
]


_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # no '.', '..', separators, dotfiles


class ConfigError(ValueError):
    """A configuration broke one or more rules; ``problems`` lists each, one line per problem."""

    def __init__(self, problems: Sequence[str] | str, source: str = "config") -> None:
        # A str is one problem (Ray re-raises remote exceptions from their message alone).
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}"
                         if not isinstance(problems, str) else problems)


# --------------------------------------------------------------------------------------------
# Rules: a predicate and the sentence that states it.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    text: str


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")

    def check(v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        if hi is not None and (v >= hi if hi_open else v > hi):
            return False
        return True

    return Rule(check, "must be " + " and ".join(parts))


def _opt(default: Any, rule: Rule | None = None, doc: str = "") -> Any:
    meta = {"rule": rule, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

# The generated 1-D signal set (data.name signals-mini): channels, 1, length; classes.
SIGNALS_SHAPE: tuple[int, int, int] = (3, 1, 128)
SIGNALS_CLASSES = 6

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class DataConfig:
    name: Literal["mnist-mini", "mnist", "parquet", "tokens-mini", "signals-mini"] = _opt(
        "mnist-mini", doc="mnist-mini: embedded 12k/2k subset (offline); mnist: full 70k; "
        "parquet: your own files; tokens-mini: generated token sequences (offline); "
        "signals-mini: generated 3-channel 1-D signals, shape (3, 1, 128), 6 classes (offline)")
    kind: Literal["image", "tokens"] = _opt("image", doc="image: (C, H, W) arrays (1-D "
                                            "signals: (C, 1, L)); tokens: integer id sequences "
                                            "(rnn family only)")
    path: str | None = _opt(None, doc="mnist: directory with the four IDX files (raw or .gz); "
                            "parquet: training file, directory or glob")
    test_path: str | None = _opt(None, doc="parquet: test file, directory or glob")
    mirrors: tuple[str, ...] = _opt(MNIST_MIRRORS, doc="mnist: base URLs tried in order when "
                                    "`path` is unset")
    cache_dir: str = _opt("~/.cache/distopt", doc="where downloads are kept")
    val_fraction: float = _opt(0.1, _range(0, 1, lo_open=True, hi_open=True),
                               "fraction of the training set held out for validation")
    split_seed: int = _opt(0, _range(0), "seed of the train/validation split")
    feature_column: str = _opt("image", doc="parquet: fixed-size list of numbers, or encoded "
                               "raw uint8 bytes")
    label_column: str = _opt("label", doc="parquet: integer class labels")
    shape: tuple[int, ...] = _opt((1, 28, 28), Rule(lambda v: len(v) == 3 and min(v) >= 1,
                                  "must be 3 positive integers (channels, height, width)"),
                                  "input shape (C, H, W)")
    num_classes: int = _opt(10, _range(2), "number of classes")
    max_len: int = _opt(64, _range(1), "tokens: sequences are padded at the front or cut "
                        "to their last max_len ids")
    vocab_size: int = _opt(5000, _range(2), "tokens: ids must lie in [0, vocab_size); 0 is "
                           "padding")
    resize: int | None = _opt(None, Rule(lambda v: v is None or 2 <= v <= 1024,
                                         "must be null or in [2, 1024]"),
                              "images: the input resolution the model sees, side x side "
                              "(bilinear, half-pixel centers, no antialiasing), in training, "
                              "evaluation and the exported model (the artifact records it); "
                              "null: as stored")

    @property
    def model_shape(self) -> tuple[int, ...]:
        """The (C, H, W) the model takes: ``shape``, or its channels at ``resize``."""
        return (self.shape[0], self.resize, self.resize) if self.resize else tuple(self.shape)


@dataclass(frozen=True)
class ModelConfig:
    family: Literal["cnn", "conv1d", "mlp", "rnn"] = _opt(
        "cnn", doc="cnn: conv blocks + dense head; conv1d: the same along L for 1-D signals "
        "(data.shape [C, 1, L]); mlp: dense; rnn: recurrent layers + head")
    preset: Literal["seed_cnn", "lenet_300_100", "seed_rnn"] | None = _opt(
        None, doc="named architecture; keys given beside it override it")
    channels: int = _opt(32, _range(1), "cnn: channels of the first conv block; each next "
                         "block doubles them")
    blocks: int = _opt(2, _range(1, 6), "cnn: conv blocks (conv 3x3 valid + max-pool 2); "
                       "mlp: hidden layers; rnn: stacked recurrent layers")
    dense_units: int = _opt(128, _range(1), "width of each hidden dense layer")
    dense_layers: int = _opt(1, _range(0, 4), "cnn, rnn: hidden dense layers before the "
                             "classifier")
    kernel_size: int = _opt(3, _range(1, 7), "cnn: conv kernel size")
    batch_norm: bool = _opt(False, doc="cnn: BatchNorm after each conv while training densely; "
                            "folded into the convs when weight pruning starts (or at export)")
    head: Literal["flatten", "gap"] = _opt("flatten", doc="cnn: flatten the last feature map, "
                                           "or global-average-pool it (one value per channel)")
    block: Literal["plain", "same", "separable"] = _opt(
        "plain", doc="cnn, conv1d: conv blocks; plain: 'valid' convs (the seed's); same: "
        "zero-padded convs (only pooling shrinks the map); separable: depthwise-separable "
        "blocks (k x k depthwise + 1 x 1 pointwise, 'same') after a full first conv")
    cell: Literal["rnn", "gru", "lstm"] = _opt("rnn", doc="rnn: recurrent cell (rnn = Elman "
                                               "tanh, Keras' SimpleRNN)")
    hidden_size: int = _opt(128, _range(1), "rnn: hidden units of each recurrent layer")
    embed_dim: int = _opt(128, _range(1), "rnn on tokens: embedding dimension")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(5, _range(1), "dense training epochs (before weight pruning)")
    batch_size: int = _opt(128, _range(1), "per-worker batch size")
    optimizer: Literal["adam", "adamw", "sgd"] = _opt("adam", doc="adam/sgd: L2 is coupled "
                                                      "weight decay; adamw: decoupled")
    lr: float = _opt(1e-3, _range(0, lo_open=True), "learning rate")
    momentum: float = _opt(0.9, _range(0, 1, hi_open=True), "sgd momentum")
    schedule: Literal["constant", "cosine"] = _opt("constant", doc="learning-rate schedule "
                                                   "over the dense epochs")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _opt(
        "auto", doc="auto: bf16 on GPUs that have it, else fp16 + loss scaling; on CPU bf16 "
        "where measured faster than fp32")
    channels_last: bool = _opt(True, doc="cnn: channels-last memory format")
    num_workers: int = _opt(1, _range(1), "Ray Train workers (DDP ranks)")
    use_gpu: bool = _opt(False, doc="a GPU (or a share of one) per worker")
    gpus_per_worker: float = _opt(1.0, _range(0, 1, lo_open=True), "with use_gpu: GPU share "
                                  "each worker holds; 0.25 lets four small trials share a GPU")
    tf32: bool = _opt(False, doc="CUDA: float32 matmuls/convolutions as TF32 (faster on "
                      "Ampere+, ~1e-3 relative error); recorded in the metrics")
    warmup_steps: int = _opt(0, _range(0), "linear learning-rate warm-up over the first steps "
                             "of dense training (large batches)")
    cpus_per_worker: float = _opt(2.0, _range(0, lo_open=True), "CPUs each worker holds")
    seed: int = _opt(0, _range(0), "seed of weights, shuffling, dropout and augmentation")
    max_failures: int = _opt(1, _range(0), "restarts of a failed trial (or worker group) from "
                             "its last epoch checkpoint")
    executor: Literal["auto", "trial_actor", "ray_train"] = _opt(
        "auto", doc="where a search trial trains. trial_actor: in its own Tune trial actor, "
        "holding the worker's resources (no worker group to start: ~0.1 s instead of ~12 s "
        "per trial); ray_train: a Ray Train TorchTrainer job (DDP). auto: trial_actor for one "
        "CPU worker, ray_train for several workers or GPUs")
    early_stop_patience: int = _opt(0, _range(0), "end dense training when validation "
                                     "accuracy has not improved for this many epochs; 0 = off")
    grad_clip: float = _opt(0.0, _range(0), "max global gradient norm; 0 = off (helps rnn "
                            "cells)")
    max_steps_per_epoch: int | None = _opt(None, Rule(lambda v: v is None or v >= 1,
                                           "must be null or >= 1"), "cap on steps per epoch")
    distill_alpha: float = _opt(0.0, _range(0, 1), "knowledge distillation: loss = (1 - alpha)"
                                " x cross-entropy + alpha x T^2 x KL(teacher || student) at "
                                "temperature T; 0 = off")
    distill_temperature: float = _opt(4.0, _range(0, lo_open=True), "distillation "
                                      "temperature T")
    teacher_overrides: dict[str, Any] = _opt({}, doc="what the teacher changes from this config "
                                             "(dotted keys, e.g. model.preset: seed_cnn); it "
                                             "trains densely in float32, once per search")
    teacher_path: str | None = _opt(None, doc="the teacher's .dopt file (path or URI); a search "
                                    "or `distopt train` sets it to the teacher it trained")


@dataclass(frozen=True)
class RegularizationConfig:
    l1: float = _opt(0.0, _range(0), "L1 penalty on weights (not biases); 0 = off")
    l2: float = _opt(0.0, _range(0), "L2 weight decay; 0 = off")
    dropout: float = _opt(0.0, _range(0, 1, hi_open=True), "dropout before dense layers")


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = _opt(0.0, _range(0, 180), "max rotation, degrees (uniform +-)")
    shift: float = _opt(0.0, _range(0, 1, hi_open=True), "max shift, fraction of width/height")
    shear: float = _opt(0.0, _range(0, 89), "max shear angle, degrees (uniform +-; Keras units)")
    zoom: float = _opt(0.0, _range(0, 1, hi_open=True), "zoom in [1-z, 1+z], x and y drawn "
                       "independently")
    token_dropout: float = _opt(0.0, _range(0, 1, hi_open=True), "tokens: probability that "
                                "each id is replaced by padding (0)")
    crop: float = _opt(0.0, _range(0, 1, hi_open=True), "tokens: up to this fraction of a "
                       "sequence is cut from its start or end (then re-padded)")


@dataclass(frozen=True)
class CompressConfig:
    prune_ratio: float = _opt(0.0, _range(0, 1, hi_open=True),
                              "fraction of weights (unstructured) or channels (structured) removed")
    prune_kind: Literal["unstructured", "structured"] = _opt(
        "unstructured", doc="unstructured: global magnitude; structured: L1-norm channels, "
        "layers physically shrink")
    finetune_epochs: int = _opt(1, _range(0), "epochs of training with the pruning masks held")
    finetune_lr_scale: float = _opt(0.5, _range(0, lo_open=True), "fine-tune lr = lr x this")
    schedule: Literal["oneshot", "gradual"] = _opt(
        "oneshot", doc="unstructured: oneshot prunes to prune_ratio at once; gradual raises "
        "sparsity over the fine-tune epochs (cubic, Zhu & Gupta 2017)")
    qat: bool = _opt(False, doc="fine-tune with weights quantized to quant_bits in every "
                     "forward (straight-through), so the artifact's rounding is trained for")
    quant_bits: Literal[32, 16, 8, 4, 3, 2] = _opt(
        8, doc="weight bits in the artifact: 32 = float32; 16/8/4/3 = symmetric "
        "per-output-channel integers; 2 = ternary {-1, 0, 1} x a per-channel scale")
    bits_first_conv: Literal[32, 16, 8, 4, 3, 2] | None = _opt(
        None, doc="mixed bit widths: weight bits of the first conv layer; null: quant_bits")
    bits_conv: Literal[32, 16, 8, 4, 3, 2] | None = _opt(
        None, doc="weight bits of the other conv layers; null: quant_bits")
    bits_dense: Literal[32, 16, 8, 4, 3, 2] | None = _opt(
        None, doc="weight bits of hidden dense layers (and rnn: recurrent and embedding "
        "weights); null: quant_bits")
    bits_classifier: Literal[32, 16, 8, 4, 3, 2] | None = _opt(
        None, doc="weight bits of the last (classifier) layer; null: quant_bits")
    clusters: int = _opt(0, _range(0, 4096), "weight clustering (Deep Compression): k shared "
                         "values per weight tensor (k-means on its non-zero weights, then "
                         "fine-tuned as shared centroids, stored as a codebook); 0 = off")


@dataclass(frozen=True)
class CompressionPlan:
    """What a trial does after dense training, derived once from ``compress.*``
    (:attr:`Config.compression_plan`): every other part reads this, never the raw keys."""

    prune_ratio: float  # 0: no weight pruning (and so no fine-tune)
    prune_kind: str
    gradual: bool  # sparsity raised over the fine-tune epochs (unstructured only)
    finetune_epochs: int  # epochs after dense training, run if a compression method fine-tunes
    qat: bool  # fine-tune on the quantized weights
    quant_bits: int  # every weight's bits, unless its layer kind has its own below
    layer_bits: tuple[tuple[str, int], ...] = ()  # (layer kind, bits): mixed bit widths
    clusters: int = 0  # weight clustering: shared values per weight tensor; 0 = none

    @property
    def prunes(self) -> bool:
        return self.prune_ratio > 0

    def bits_of(self, kind: str) -> int:
        """Weight bits of a layer kind (``first_conv``, ``conv``, ``dense``, ``classifier``:
        :func:`distopt.models.layer_kinds`)."""
        return dict(self.layer_bits).get(kind, self.quant_bits)


@dataclass(frozen=True)
class SearchConfig:
    space: dict[str, Any] = _opt({}, doc="dotted key -> {low, high, log, step} or {choices}")
    objectives: tuple[tuple[str, str], ...] = _opt(
        metrics.DEFAULT_OBJECTIVES, doc="(metric, max|min) pairs")
    sampler: Literal["nsga2", "tpe", "random"] = _opt("nsga2", doc="Optuna sampler")
    seed: int = _opt(0, _range(0), "sampler seed")
    num_trials: int | None = _opt(16, Rule(lambda v: v is None or v >= 1,
                                  "must be null or >= 1"), "trials in the search; null: as "
                                  "many as time_budget_s allows")
    time_budget_s: float | None = _opt(None, Rule(lambda v: v is None or v > 0,
                                       "must be null or > 0"), "wall-clock budget in seconds: "
                                       "no trial starts after it (running ones finish); with "
                                       "num_trials, whichever ends first")
    max_concurrent: int | None = _opt(None, Rule(lambda v: v is None or v >= 1,
                                      "must be null or >= 1"),
                                      "null: derived from cluster and per-trial resources")
    scheduler: Literal["fifo", "mo_asha"] = _opt(
        "fifo", doc="fifo: every trial runs to the end; mo_asha: multi-objective asynchronous "
        "successive halving over dense epochs (trials outside the top 1/reduction_factor of "
        "a rung by non-dominated sorting stop there)")
    grace_epochs: int = _opt(1, _range(1), "mo_asha: dense epochs of the first rung")
    reduction_factor: int = _opt(3, _range(2), "mo_asha: rungs at grace_epochs x factor^k "
                                 "(below train.epochs); 1/factor of a rung's trials go on")
    storage: str | None = _opt(None, doc="Optuna RDB URL; null: SQLite in the experiment dir. "
                               "Write a password as ${ENV_VAR}: it is read from the environment "
                               "when the study opens; a literal one is redacted in results")
    trial_overrides: dict[str, Any] = _opt({}, doc="dotted key -> value every trial uses "
                                            "instead of the sections above (e.g. fewer epochs)")
    reseed: int = _opt(0, _range(0, 20), "noise-aware front: seeds per front configuration in "
                       "all (the search's own run is the first; reseed - 1 retrainings each "
                       "after the search), reported as mean and sd of decoded test accuracy, "
                       "points within seed noise of their smaller neighbour marked; 0 or 1: off")
    children: int = _opt(0, _range(0, 64), "train once, compress many: each trial that "
                         "finishes dense training also compresses its dense model with this "
                         "many other values of the space's compress.* keys (drawn at random), "
                         "each a trial of its own in the results and the study")
    reuse_dense: bool = _opt(True, doc="train once, compress many across trials: a trial whose "
                             "settings differ from an earlier trial's only in compress.* "
                             "fine-tunes that trial's dense model (kept in <output>/dense) "
                             "instead of training its own")


@dataclass(frozen=True)
class Config:
    """The whole configuration of a trial or a search. Frozen: derive variants with
    :meth:`with_overrides`."""

    name: str = _opt("distopt", Rule(lambda v: _SLUG.fullmatch(v) is not None,
                                     "must be 1-100 letters, digits, '_', '-' or '.', starting "
                                     "with a letter or digit"),
                     "experiment name (results/<name> by default)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serializable nested dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with credentials redacted: what results files and logs may hold."""
        d = self.to_dict()
        if d["search"]["storage"]:
            d["search"]["storage"] = redact_url(d["search"]["storage"])
        return d

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> Config:
        """Build and validate; raises :class:`ConfigError` listing every problem."""
        return _build(raw, source)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A new validated config with dotted keys replaced (used by the search per trial)."""
        raw = self.to_dict()
        problems: list[str] = []
        for key, value in overrides.items():
            _set_dotted(raw, key, value, problems)
        if problems:
            raise ConfigError(problems)
        return _build(raw, "config")

    @property
    def dense_key(self) -> str:
        """Which configurations train the same dense model: all of them but the compression
        settings (``compress.*``: weight pruning, fine-tuning, bit widths, which act after
        the last dense epoch), the search's settings and the name. Same key, same data, seed
        and hyperparameters, so the same dense weights: the one place this is decided."""
        raw = {k: v for k, v in self.to_dict().items() if k not in ("name", "compress", "search")}
        text = json.dumps(raw, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def compression_plan(self) -> CompressionPlan:
        """The compression phases of a trial: the one place they are decided."""
        c = self.compress
        prunes = c.prune_ratio > 0
        fine_tunes = prunes or c.clusters > 0
        return CompressionPlan(
            prune_ratio=c.prune_ratio, prune_kind=c.prune_kind,
            gradual=prunes and c.schedule == "gradual" and c.prune_kind == "unstructured",
            finetune_epochs=c.finetune_epochs,
            qat=c.qat and fine_tunes and c.finetune_epochs > 0, quant_bits=c.quant_bits,
            clusters=c.clusters,
            layer_bits=tuple((kind, bits) for kind, bits in (
                ("first_conv", c.bits_first_conv), ("conv", c.bits_conv),
                ("dense", c.bits_dense), ("classifier", c.bits_classifier))
                if bits is not None))

    @property
    def in_trial_actor(self) -> bool:
        """Whether a search trial of this config trains inside its own Tune trial actor rather
        than as a Ray Train job: the one place ``train.executor: auto`` is decided."""
        t = self.train
        if t.executor == "auto":
            return t.num_workers == 1 and not t.use_gpu
        return t.executor == "trial_actor"

    def child_configs(self) -> list[tuple[dict[str, Any], Config]]:
        """The compression settings a search trial of this config forks from its dense model
        (``search.children``): that many value sets of the space's ``compress.*`` keys, drawn
        uniformly from their ranges and choices, none equal to this config's own or to each
        other, each with its validated config (draws that make the config invalid, such as
        QAT at 32 bits, are skipped). Seeded by ``search.seed`` and this config, so every rank
        and every restart of a trial draws the same; the one place children are decided."""
        keys = [k for k in self.search.space if k.startswith("compress.")]
        if not self.search.children or not keys:
            return []
        raw = self.to_dict()
        own = {k: _get_dotted(raw, k) for k in keys}
        digest = zlib.crc32(json.dumps(raw, sort_keys=True, default=str).encode())
        rng = random.Random(self.search.seed * 1_000_003 + digest)
        seen, out = {repr(sorted(own.items()))}, []
        for _ in range(20 * self.search.children):
            if len(out) == self.search.children:
                break
            values = {k: _draw(self.search.space[k], field_info(k)[0], rng) for k in keys}
            if repr(sorted(values.items())) in seen:
                continue
            seen.add(repr(sorted(values.items())))
            try:
                out.append((values, self.with_overrides(values)))
            except ConfigError:
                continue
        return out

    @property
    def distills(self) -> bool:
        """Whether a run of this config, or a trial of its search, learns from a teacher: the
        one place that decides whether a teacher is trained."""
        if self.trial_config().train.distill_alpha > 0:
            return True
        spec = self.search.space.get("train.distill_alpha", {})
        return any(v > 0 for v in spec.get("choices", [])) or spec.get("high", 0) > 0

    def teacher_config(self) -> Config:
        """The teacher: this config with ``train.teacher_overrides``, trained densely (no
        weight pruning, float32 weights, no distillation, no children, no early stopping)."""
        return self.with_overrides({
            **self.train.teacher_overrides, "train.teacher_overrides": {},
            "train.distill_alpha": 0.0, "train.teacher_path": None,
            "compress.prune_ratio": 0.0, "compress.quant_bits": 32, "compress.qat": False,
            "compress.schedule": "oneshot", "compress.clusters": 0,
            "compress.bits_first_conv": None, "compress.bits_conv": None,
            "compress.bits_dense": None, "compress.bits_classifier": None,
            "search.children": 0, "search.scheduler": "fifo", "search.trial_overrides": {},
            "search.space": {},
            "name": f"{self.name}-teacher"[:100]})

    def trial_config(self) -> Config:
        """The config every search trial starts from: this one with ``search.trial_overrides``."""
        if not self.search.trial_overrides:
            return self
        # The result has no trial_overrides left, so applying them is not repeated.
        return self.with_overrides({**self.search.trial_overrides, "search.trial_overrides": {}})


def bits_text(compress: Mapping[str, Any]) -> str:
    """A ``compress`` section's weight bits for tables: ``"4"``, or with mixed widths
    ``"4 (first_conv 8, classifier 8)"``."""
    mixed = [f"{k.removeprefix('bits_')} {compress[k]}" for k in
             ("bits_first_conv", "bits_conv", "bits_dense", "bits_classifier")
             if compress.get(k) is not None]
    return f"{compress['quant_bits']}" + (f" ({', '.join(mixed)})" if mixed else "")


def trial_epochs(cfg: Config) -> int | None:
    """Dense epochs of a search trial (``search.trial_overrides`` applied), or None if the
    overrides set it to something that is not an integer (reported by its own rule)."""
    value = cfg.search.trial_overrides.get("train.epochs", cfg.train.epochs)
    return value if isinstance(value, int) else None


REDACTED = "***"
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)(?P<pw>[^@/?#]*)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|pwd|secret|token|"
                           r"access_key|secret_key)=)(?P<value>[^&#]*)")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def redact_url(url: str) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://user:***@host/...``, and secret query
    parameters (``?password=...``) likewise. ``${ENV_VAR}`` references are no secret and stay."""
    def keep_refs(value: str) -> str:
        return value if _ENV_REF.fullmatch(value) or not value else REDACTED

    url = _URL_PASSWORD.sub(lambda m: m["head"] + keep_refs(m["pw"]) + "@", url)
    return _QUERY_SECRET.sub(lambda m: m["key"] + keep_refs(m["value"]), url)


def expand_env_refs(value: str, key: str) -> str:
    """Replace ``${NAME}`` with the environment variable ``NAME`` (the way to keep passwords out
    of configs and results); an unset one is a :class:`ConfigError` naming ``key``."""
    missing = [n for n in _ENV_REF.findall(value) if n not in os.environ]
    if missing:
        raise ConfigError([f"{key}: environment variable(s) {', '.join(missing)} are not set"])
    return _ENV_REF.sub(lambda m: os.environ[m.group(1)], value)


def storage_url(cfg: Config) -> str | None:
    """The Optuna storage URL with ``${ENV_VAR}`` references filled in (driver only)."""
    s = cfg.search.storage
    return expand_env_refs(s, "search.storage") if s else None


PRESETS: dict[str, dict[str, Any]] = {
    # Keras' classic mnist_cnn: Conv32-Conv64 (3x3 valid, each + max-pool 2), Dense128: 225,034.
    "seed_cnn": {"family": "cnn", "channels": 32, "blocks": 2, "dense_units": 128,
                 "dense_layers": 1, "kernel_size": 3},
    # Deep Compression's LeNet-300-100 shape needs unequal widths; closest in the family.
    "lenet_300_100": {"family": "mlp", "blocks": 2, "dense_units": 300},
    # The seed's Keras RNN: Embedding(5000, 128) -> SimpleRNN(128, return_sequences=True) ->
    # SimpleRNN(128) -> Dense(10). On images (sequential MNIST) there is no embedding.
    "seed_rnn": {"family": "rnn", "cell": "rnn", "blocks": 2, "hidden_size": 128,
                 "embed_dim": 128, "dense_layers": 0},
}


# --------------------------------------------------------------------------------------------
# Building and validating
# --------------------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _describe(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Coerce a YAML value to the annotated type, or record why it can't be."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, problems)
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        problems.append(f"{key}: got {_describe(value)}; must be one of "
                        f"{', '.join(repr(a) for a in args)}")
        return args[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: got {_describe(value)}; must be true or false")
        return False
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key}: got {_describe(value)}; must be an integer")
        return 0
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{key}: got {_describe(value)}; must be a number")
        return 0.0
    if tp is str:
        if isinstance(value, str):
            return value
        problems.append(f"{key}: got {_describe(value)}; must be a string")
        return ""
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: got {_describe(value)}; must be a list")
            return ()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", problems)
                         for i, v in enumerate(value))
        if len(value) != len(args):
            problems.append(f"{key}: got {_describe(value)}; must have {len(args)} items")
            return tuple(value)
        return tuple(_coerce(v, a, f"{key}[{i}]", problems)
                     for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: got {_describe(value)}; must be a mapping")
            return {}
        return dict(value)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _build_section(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix}: got {_describe(raw)}; must be a mapping")
        raw = {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            problems.append(f"{prefix}.{k}: unknown key (known: {', '.join(sorted(names))})"
                            .lstrip("."))
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}".lstrip(".")
        if f.name not in raw:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build_section(hints[f.name], raw[f.name], key, problems)
            continue
        before = len(problems)
        value = _coerce(raw[f.name], hints[f.name], key, problems)
        rule: Rule | None = f.metadata.get("rule")
        if len(problems) == before and rule is not None and value is not None:
            try:
                ok = rule.check(value)
            except TypeError:
                ok = False
            if not ok:
                problems.append(f"{key}: got {_describe(raw[f.name])}; {rule.text}")
        kwargs[f.name] = value
    return cls(**kwargs)


def field_info(dotted: str) -> tuple[Any, Rule | None] | None:
    """Type and rule of a dotted leaf key, or None if no such key exists."""
    cls: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            return (None if dataclasses.is_dataclass(tp) else (tp, fields[part].metadata.get("rule")))
        cls = tp
    return None


def _check_value(dotted: str, value: Any, what: str, problems: list[str]) -> None:
    """Check one candidate value of a searched key against the key's own type and rule."""
    info = field_info(dotted)
    assert info is not None
    tp, rule = info
    before = len(problems)
    v = _coerce(value, tp, f"search.space.{dotted}.{what}", problems)
    if len(problems) == before and rule is not None and v is not None and not rule.check(v):
        problems.append(f"search.space.{dotted}.{what}: got {_describe(value)}; "
                        f"{dotted} {rule.text}")


SPACE_KEYS = {"low", "high", "log", "step", "choices"}


def _check_space(space: Mapping[str, Any], problems: list[str]) -> None:
    for key, spec in space.items():
        where = f"search.space.{key}"
        info = field_info(key)
        if info is None or key.startswith("search."):
            problems.append(f"{where}: not a config key that can be searched")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: got {_describe(spec)}; must be a mapping with "
                            "low/high[/log/step] or choices")
            continue
        unknown = set(spec) - SPACE_KEYS
        if unknown:
            problems.append(f"{where}: unknown entries {sorted(unknown)} (known: "
                            f"{', '.join(sorted(SPACE_KEYS))})")
        if "choices" in spec:
            if set(spec) & {"low", "high", "log", "step"}:
                problems.append(f"{where}: give either choices or low/high, not both")
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                problems.append(f"{where}.choices: got {_describe(choices)}; must be a "
                                "non-empty list")
                continue
            for i, c in enumerate(choices):
                _check_value(key, c, f"choices[{i}]", problems)
            continue
        if "low" not in spec or "high" not in spec:
            problems.append(f"{where}: needs both low and high (or choices)")
            continue
        tp = info[0]
        if tp not in (int, float):
            problems.append(f"{where}: {key} is not numeric; search it with choices")
            continue
        low, high = spec["low"], spec["high"]
        _check_value(key, low, "low", problems)
        _check_value(key, high, "high", problems)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            continue
        if low > high:
            problems.append(f"{where}: low <= high must hold, but got (low={low!r}, "
                            f"high={high!r})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            problems.append(f"{where}.log: got {_describe(log)}; must be true or false")
        elif log and low <= 0:
            problems.append(f"{where}: a log range needs low > 0, but got low={low!r}")
        step = spec.get("step")
        if step is not None:
            if log:
                problems.append(f"{where}: step and log cannot be combined")
            elif not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
                problems.append(f"{where}.step: got {_describe(step)}; must be a number > 0")
            elif tp is int and not float(step).is_integer():
                problems.append(f"{where}.step: got {step!r}; {key} is an integer, so step "
                                "must be an integer")


def _cross_checks(cfg: Config, problems: list[str], check_paths: bool) -> None:
    """Rules between fields. Each runs only if the fields it reads passed their own rules, so
    that one bad value yields one problem, while every other problem is still reported."""
    bad = {p.split(":", 1)[0].split("[", 1)[0] for p in problems}

    def ok(*keys: str) -> bool:
        return not any(k == b or k.startswith(b + ".") or b.startswith(k + ".") for k in keys
                       for b in bad)

    d, m = cfg.data, cfg.model
    if ok("data.name", "data.path") and d.name == "parquet" and not d.path:
        problems.append("data.path: got None; data.name 'parquet' needs the training file(s)")
    if ok("data.name", "data.path", "data.mirrors") and d.name == "mnist" and d.path is None \
            and not d.mirrors:
        problems.append("data.mirrors: got []; data.name 'mnist' without data.path needs at "
                        "least one mirror URL")
    for p in (d.path, d.test_path) if check_paths and ok("data.path", "data.test_path") else ():
        if p and not any(ch in p for ch in "*?[") and "://" not in p and \
                not Path(p).expanduser().exists():
            problems.append(f"data: path {p!r} does not exist")
    if ok("data.name", "data.kind") and d.name == "tokens-mini" and d.kind != "tokens":
        problems.append(f"data.kind: got {d.kind!r}; data.name 'tokens-mini' is 'tokens'")
    if ok("data.name", "data.kind") and d.name in ("mnist", "mnist-mini", "signals-mini") and \
            d.kind != "image":
        problems.append(f"data.kind: got {d.kind!r}; data.name {d.name!r} is 'image'")
    if ok("data.kind", "model.family") and d.kind == "tokens" and m.family != "rnn":
        problems.append(f"model.family: got {m.family!r}; token sequences need 'rnn'")
    a = cfg.augment
    image_aug = {k: v for k, v in (("rotation", a.rotation), ("shift", a.shift),
                                   ("shear", a.shear), ("zoom", a.zoom)) if v}
    token_aug = {k: v for k, v in (("token_dropout", a.token_dropout), ("crop", a.crop)) if v}
    if ok("data.kind", "augment") and d.kind == "tokens" and image_aug:
        problems.append(f"augment: got {image_aug}; image augmentation needs data.kind 'image'")
    if ok("data.kind", "augment") and d.kind == "image" and token_aug:
        problems.append(f"augment: got {token_aug}; token augmentation needs data.kind 'tokens'")
    if ok("data.name", "data.shape", "data.num_classes") and \
            d.name in ("mnist", "mnist-mini") and (tuple(d.shape) != (1, 28, 28)
                                              or d.num_classes != 10):
        problems.append(f"data.shape/num_classes: got {list(d.shape)}/{d.num_classes}; "
                        f"{d.name} is (1, 28, 28) with 10 classes")
    if ok("data.name", "data.shape", "data.num_classes") and d.name == "signals-mini" and \
            (tuple(d.shape) != SIGNALS_SHAPE or d.num_classes != SIGNALS_CLASSES):
        problems.append(f"data.shape/num_classes: got {list(d.shape)}/{d.num_classes}; "
                        f"signals-mini is {SIGNALS_SHAPE} with {SIGNALS_CLASSES} classes")
    if ok("data.resize", "data.kind", "model.family") and d.resize and \
            (d.kind != "image" or m.family == "conv1d"):
        problems.append(f"data.resize: got {d.resize} with data.kind {d.kind!r}, model.family "
                        f"{m.family!r}; resizing is for 2-D images")
    if ok("model.family", "data.shape") and m.family == "conv1d" and d.shape[1] != 1:
        problems.append(f"data.shape: got {list(d.shape)} with model.family 'conv1d'; 1-D "
                        "signals are [channels, 1, length]")
    if ok("model.family", "model.blocks", "model.kernel_size", "data.shape", "data.resize") and \
            m.family in ("cnn", "conv1d"):
        side = d.shape[2] if m.family == "conv1d" else min(d.model_shape[1:])
        side = conv_out_side(side, side, m.blocks, (m.kernel_size,) * 2, (2, 2), m.block)[0]
        if side < 1:
            hint = "; for 1-D signals use model.family 'conv1d' with data.shape [C, 1, L]" \
                if m.family == "cnn" and 1 in d.shape[1:] else ""
            problems.append(f"model.blocks: got {m.blocks}; with kernel_size {m.kernel_size} "
                            f"the {d.model_shape[1]}x{d.model_shape[2]} input shrinks to "
                            f"nothing{hint}")
    if ok("model.block", "model.kernel_size") and m.block != "plain" and m.kernel_size % 2 == 0:
        problems.append(f"model.kernel_size: got {m.kernel_size} with model.block {m.block!r}; "
                        "'same' padding needs an odd kernel size")
    if ok("model.block", "compress.prune_kind") and m.block == "separable" and \
            cfg.compress.prune_kind == "structured":
        problems.append("compress.prune_kind: got 'structured' with model.block 'separable'; "
                        "structured pruning removes whole channels of full convs only (use "
                        "unstructured)")
    if ok("model.family", "augment") and m.family == "conv1d" and \
            {k for k in image_aug if k != "shift"}:
        problems.append(f"augment: got {image_aug} with model.family 'conv1d'; 1-D signals "
                        "take only augment.shift (along L)")
    t = cfg.train
    if ok("train.executor", "train.num_workers", "train.use_gpu") and \
            t.executor == "trial_actor" and (t.num_workers > 1 or t.use_gpu):
        problems.append(f"train.executor: got 'trial_actor' with num_workers {t.num_workers}, "
                        f"use_gpu {t.use_gpu}; a trial actor trains one CPU worker (several "
                        "workers or GPUs need 'ray_train' or 'auto')")
    c = cfg.compress
    # Whether the built-in methods fine-tune (training.compression decides it for a run).
    fine_tunes = ok("compress") and c.finetune_epochs > 0 and (c.prune_ratio > 0 or
                                                                c.clusters > 0)
    all_bits = {c.quant_bits, *(b for b in (c.bits_first_conv, c.bits_conv, c.bits_dense,
                                             c.bits_classifier) if b is not None)} \
        if ok("compress") else set()
    if ok("compress") and c.qat and (all_bits == {32} or not fine_tunes):
        problems.append(f"compress.qat: got true with quant_bits {c.quant_bits}, prune_ratio "
                        f"{c.prune_ratio:g}, finetune_epochs {c.finetune_epochs}; quantization-"
                        "aware fine-tuning needs quant_bits < 32 and a fine-tune phase "
                        "(prune_ratio > 0 or clusters > 0, finetune_epochs >= 1)")
    if ok("compress") and c.clusters == 1:
        problems.append("compress.clusters: got 1; weight clustering needs at least 2 shared "
                        "values per tensor (0 turns it off)")
    if ok("compress") and c.schedule == "gradual" and (c.prune_kind != "unstructured"
                                                      or not fine_tunes or c.prune_ratio == 0):
        problems.append(f"compress.schedule: got 'gradual' with prune_kind {c.prune_kind!r}, "
                        f"prune_ratio {c.prune_ratio:g}, finetune_epochs {c.finetune_epochs}; "
                        "gradual pruning needs unstructured pruning over fine-tune epochs")
    if ok("search.scheduler", "search.grace_epochs", "train.epochs") and \
            cfg.search.scheduler == "mo_asha":
        epochs = trial_epochs(cfg)
        if epochs is not None and epochs <= cfg.search.grace_epochs:
            problems.append(f"search.grace_epochs: got {cfg.search.grace_epochs} with "
                            f"{epochs} dense epochs per trial; mo_asha needs a rung before the "
                            "last dense epoch (grace_epochs < train.epochs)")
    if ok("search.children", "search.space") and cfg.search.children and \
            not any(k.startswith("compress.") for k in cfg.search.space):
        problems.append(f"search.children: got {cfg.search.children} with no compress.* key in "
                        "search.space; children differ from their trial only in compress.* "
                        "values drawn from the space")
    if ok("search.num_trials", "search.time_budget_s") and cfg.search.num_trials is None \
            and cfg.search.time_budget_s is None:
        problems.append("search.num_trials: got None with time_budget_s None; a search needs "
                        "a trial count, a time budget, or both")
    st = cfg.search.storage
    if check_paths and ok("search.storage") and st:
        missing = [n for n in _ENV_REF.findall(st) if n not in os.environ]
        if missing:
            problems.append(f"search.storage: got {redact_url(st)!r}; environment variable(s) "
                            f"{', '.join(missing)} are not set")
        if f":{REDACTED}@" in st or f"={REDACTED}" in st:
            problems.append(f"search.storage: got {st!r}; its password was redacted when the "
                            "results were written: pass the real URL (search.storage=...), "
                            "ideally with the password as ${ENV_VAR}")
    if not ok("search.objectives"):
        return
    names = [o[0] for o in cfg.search.objectives]
    for i, (name, direction) in enumerate(cfg.search.objectives):
        obj = metrics.OBJECTIVES.get(name)
        if obj is None:
            problems.append(f"search.objectives[{i}]: got metric {name!r}; must be one of "
                            f"{', '.join(metrics.OBJECTIVES)}")
        elif direction != obj.direction:
            problems.append(f"search.objectives[{i}]: got direction {direction!r} for {name}; "
                            f"{name} is better when {obj.direction}imized")
    if len(set(names)) != len(names):
        problems.append(f"search.objectives: got {names}; each metric at most once")
    if check_paths and metrics.ORT_LATENCY_MS in names:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(f"search.objectives: {metrics.ORT_LATENCY_MS} needs "
                            f"{' and '.join(missing)}, not installed here: "
                            "pip install 'distopt[onnx]'")
    if not names:
        problems.append("search.objectives: got []; needs at least one objective")


def _build(raw: Mapping[str, Any], source: str, check_paths: bool = False) -> Config:
    """Validate everything; ``check_paths`` also checks that local data paths exist (on the
    machine where the user typed them, not in workers that may run elsewhere)."""
    problems: list[str] = []
    raw = copy.deepcopy(dict(raw)) if isinstance(raw, Mapping) else raw
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        preset = raw["model"].get("preset")
        if preset in PRESETS:
            raw["model"] = {**PRESETS[preset], **raw["model"]}
    cfg = _build_section(Config, raw, "", problems)
    _cross_checks(cfg, problems, check_paths)
    _check_space(cfg.search.space, problems)
    for key in cfg.search.trial_overrides:
        if field_info(key) is None or key.startswith("search."):
            problems.append(f"search.trial_overrides.{key}: not a config key a trial can set")
    if not problems and cfg.search.trial_overrides:
        try:
            cfg.trial_config()
        except ConfigError as e:
            problems += [f"search.trial_overrides: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return node


def _draw(spec: Mapping[str, Any], kind: Any, rng: random.Random) -> Any:
    """One value of a validated ``search.space`` entry, uniformly over its range or choices
    (log-uniform with ``log``, on the grid with ``step``): what Optuna's distributions of the
    same entry contain (:mod:`distopt.space`)."""
    if "choices" in spec:
        return rng.choice(list(spec["choices"]))
    low, high, step = spec["low"], spec["high"], spec.get("step")
    if step:
        value = low + step * rng.randint(0, int(math.floor((high - low) / step + 1e-9)))
        return int(value) if kind is int else float(value)
    if spec.get("log"):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
        return min(max(int(round(value)), int(low)), int(high)) if kind is int else value
    return rng.randint(int(low), int(high)) if kind is int else rng.uniform(low, high)


def _set_dotted(raw: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            problems.append(f"{key}: {part} is not a section")
            return
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "augment.rotation=0"]`` -> ``{"train.epochs": 3, ...}``.

    Values are parsed as YAML, so numbers, booleans, ``null`` and ``[lists]`` work."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r}: must be key=value with a dotted key")
            continue
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            problems.append(f"override {item!r}: value is not valid YAML ({e.__class__.__name__})")
    if problems:
        raise ConfigError(problems, "overrides")
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] | Mapping[str, Any] = ()
                ) -> Config:
    """Load a YAML file (or defaults if ``path`` is None), apply overrides, validate all."""
    raw: Any = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError([f"config file {path} does not exist"], source) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"top level: got {_describe(raw)}; must be a mapping"], source)
    ov = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    problems: list[str] = []
    for key, value in ov.items():
        _set_dotted(raw, key, value, problems)
    if problems:
        raise ConfigError(problems, source)
    if isinstance(raw.get("data"), dict):
        raw["data"] = absolute_data_paths(raw["data"])
    return _build(raw, source, check_paths=True)


def absolute_data_paths(data: Mapping[str, Any]) -> dict[str, Any]:
    """A data section with local paths spelled one way: ``~`` and relative paths expanded
    against the directory the command runs in (Ray's workers run elsewhere), URLs untouched.
    Also how a stored config and the same file loaded again are compared on ``--resume``."""
    out = dict(data)
    for key in ("path", "test_path", "cache_dir"):
        v = out.get(key)
        if isinstance(v, str) and v and "://" not in v:
            out[key] = os.path.abspath(os.path.expanduser(v))
    return out


def reference_markdown() -> str:
    """The config reference table (key, default, rule, meaning) for the README."""
    rows = ["| key | default | rule | meaning |", "|---|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], key + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rule = f.metadata.get("rule")
            tp = hints[f.name]
            if typing.get_origin(tp) in (Union, types.UnionType):  # Optional[Literal[...]]
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            rule_text = rule.text if rule else (
                "one of " + ", ".join(repr(a) for a in typing.get_args(tp) if a is not None
                                      and a is not type(None))
                if typing.get_origin(tp) is Literal else "")
            dflt = str(_plain(default)).replace("|", "\\|")
            if len(dflt) > 40:
                dflt = dflt[:37] + "..."
            rows.append(f"| `{key}` | `{dflt}` | {rule_text} | {f.metadata.get('doc', '')} |")

    walk(Config, "")
    return "\n".join(rows)
