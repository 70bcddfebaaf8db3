"""The schema as data: one frozen dataclass per config section of the model, its data, training
and compression (the search's is :mod:`.search_section`), each field with its default, its rule
and its meaning (docs/config.md's reference is generated from them), and the model presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from distopt.config.rules import Rule, in_range, option
from distopt.user_models import is_factory_path

__all__ = ["AugmentConfig", "BUILT_IN_FAMILIES", "CLICKS_CATEGORICAL", "CLICKS_LABEL",
           "CLICKS_NUMERIC", "ClusterConfig", "CompressConfig",
           "DataConfig", "ModelConfig", "PruneConfig", "QuantizeConfig",
           "RegularizationConfig", "RowPruneConfig", "SIGNALS_CLASSES",
           "SIGNALS_SHAPE", "TrainConfig"]

BUILT_IN_FAMILIES = ("cnn", "conv1d", "mlp", "rnn", "recsys")
# The generated 1-D signal set (data.name signals-mini): channels, 1, length; classes.
SIGNALS_SHAPE: tuple[int, int, int] = (3, 1, 128)
SIGNALS_CLASSES = 6
# The generated click log (data.name clicks-mini, distopt.data.clicks): its columns.
CLICKS_CATEGORICAL: tuple[str, ...] = ("user_id", "item_id", "category", "hour", "device")
CLICKS_NUMERIC: tuple[str, ...] = ("price", "position")
CLICKS_LABEL = "click"

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class DataConfig:
    name: Literal["mnist-mini", "mnist", "parquet", "tokens-mini", "signals-mini",
                  "clicks-mini"] = option(
        "mnist-mini", doc="mnist-mini: embedded 12k/2k subset (offline); mnist: full 70k; "
        "parquet: your own files; tokens-mini: generated token sequences (offline); "
        "signals-mini: generated 3-channel 1-D signals, shape (3, 1, 128), 6 classes (offline); "
        "clicks-mini: generated click log, tabular, binary label (offline; "
        "distopt.data.clicks)")
    kind: Literal["image", "tokens", "tabular"] = option(
        "image", doc="image: (C, H, W) arrays (1-D signals: (C, 1, L)); tokens: integer id "
        "sequences (rnn family only); tabular: categorical and numeric columns (recsys family "
        "only)")
    path: str | None = option(None, doc="mnist: directory with the four IDX files (raw or .gz); "
                            "parquet: training file, directory or glob")
    test_path: str | None = option(None, doc="parquet: test file, directory or glob")
    mirrors: tuple[str, ...] = option(MNIST_MIRRORS, doc="mnist: base URLs tried in order when "
                                    "`path` is unset")
    cache_dir: str = option("~/.cache/distopt", doc="where downloads are kept")
    val_fraction: float = option(0.1, in_range(0, 1, lo_open=True, hi_open=True),
                               "fraction of the training set held out for validation")
    split_seed: int = option(0, in_range(0), "seed of the train/validation split")
    feature_column: str = option("image", doc="parquet: fixed-size list of numbers, or encoded "
                               "raw uint8 bytes")
    label_column: str = option("label", doc="parquet: integer class labels")
    categorical_columns: tuple[str, ...] = option((), doc="tabular parquet: columns of ids "
                                                "(integers or strings), each hashed into "
                                                "num_buckets")
    numeric_columns: tuple[str, ...] = option((), doc="tabular parquet: columns of numbers, "
                                            "standardized on the training split")
    num_buckets: int = option(1000, in_range(2, 1 << 24), "tabular: every categorical value is "
                            "hashed into buckets 1..num_buckets-1 of its column (a stable "
                            "BLAKE2b hash, distopt.data.tabular.hash_buckets); bucket 0 is "
                            "out of vocabulary: null values")
    column_buckets: dict[str, int] = option(
        {}, Rule(lambda v: all(type(b) is int and 2 <= b <= 1 << 24 for b in v.values()),
                 f"must map column names to integers in [2, {1 << 24}]"),
        "tabular: num_buckets of single columns, e.g. {device: 32, hour: 256}: a column of a "
        "few values needs few buckets, and its table (recsys) then has at most that many rows")
    shape: tuple[int, ...] = option((1, 28, 28), Rule(lambda v: len(v) == 3 and min(v) >= 1,
                                  "must be 3 positive integers (channels, height, width)"),
                                  "input shape (C, H, W)")
    num_classes: int = option(10, in_range(2), "number of classes")
    max_len: int = option(64, in_range(1), "tokens: sequences are padded at the front or cut "
                        "to their last max_len ids")
    vocab_size: int = option(5000, in_range(2), "tokens: ids must lie in [0, vocab_size); 0 is "
                           "padding")
    resize: int | None = option(None, Rule(lambda v: v is None or 2 <= v <= 1024,
                                         "must be null or in [2, 1024]"),
                              "images: the input resolution the model sees, side x side "
                              "(bilinear, half-pixel centers, no antialiasing), in training, "
                              "evaluation and the exported model (the artifact records it); "
                              "null: as stored")

    @property
    def categorical(self) -> tuple[str, ...]:
        """Tabular: the categorical columns (clicks-mini's own, or categorical_columns)."""
        return CLICKS_CATEGORICAL if self.name == "clicks-mini" else tuple(
            self.categorical_columns)

    @property
    def buckets_of(self) -> tuple[int, ...]:
        """Tabular: the hash buckets of each categorical column (column_buckets, else
        num_buckets)."""
        return tuple(self.column_buckets.get(c, self.num_buckets) for c in self.categorical)

    @property
    def numeric(self) -> tuple[str, ...]:
        """Tabular: the numeric columns (clicks-mini's own, or numeric_columns)."""
        return CLICKS_NUMERIC if self.name == "clicks-mini" else tuple(self.numeric_columns)

    @property
    def model_shape(self) -> tuple[int, ...]:
        """The (C, H, W) the model takes: ``shape``, or its channels at ``resize``."""
        return (self.shape[0], self.resize, self.resize) if self.resize else tuple(self.shape)


@dataclass(frozen=True)
class ModelConfig:
    family: str = option(
        "cnn", Rule(lambda v: v in BUILT_IN_FAMILIES or is_factory_path(v),
                    f"must be one of {', '.join(BUILT_IN_FAMILIES)} or 'package.module:Factory' "
                    "(your own model)"),
        "cnn: conv blocks + dense head; conv1d: the same along L for 1-D signals "
        "(data.shape [C, 1, L]); mlp: dense; rnn: recurrent layers + head; or "
        "'package.module:Factory': your own model, built by Factory(model section as a dict, "
        "in_shape, num_classes) (distopt.user_models)")
    preset: Literal["seed_cnn", "lenet_300_100", "seed_rnn"] | None = option(
        None, doc="named architecture; keys given beside it override it")
    channels: int = option(32, in_range(1), "cnn: channels of the first conv block; each next "
                         "block doubles them (model.block depthwise: keeps them)")
    blocks: int = option(2, in_range(1, 6), "cnn: conv blocks (conv 3x3 valid + max-pool 2); "
                       "mlp: hidden layers; rnn: stacked recurrent layers")
    dense_units: int = option(128, in_range(1), "width of each hidden dense layer")
    dense_layers: int = option(1, in_range(0, 4), "cnn, rnn: hidden dense layers before the "
                             "classifier")
    dense_taper: float = option(1.0, in_range(0, 1, lo_open=True), "each hidden dense layer "
                              "after the first is this times as wide as the one before "
                              "(rounded; BitNetMCU's 96 -> 64: 0.667); 1: all dense_units")
    kernel_size: int = option(3, in_range(1, 7), "cnn: conv kernel size")
    batch_norm: bool = option(False, doc="cnn: BatchNorm after each conv while training densely; "
                            "folded into the convs when weight pruning starts (or at export)")
    head: Literal["flatten", "gap"] = option("flatten", doc="cnn: flatten the last feature map, "
                                           "or global-average-pool it (one value per channel)")
    block: Literal["plain", "same", "separable", "depthwise", "bitnet"] = option(
        "plain", doc="cnn, conv1d: conv blocks; plain: 'valid' convs (the seed's); same: "
        "zero-padded convs (only pooling shrinks the map); separable: depthwise-separable "
        "blocks (k x k depthwise + 1 x 1 pointwise, 'same') after a full first conv; "
        "depthwise: k x k depthwise convs only ('same', one filter per channel: BitNetMCU's) "
        "after a full first conv, every block model.channels wide; bitnet: depthwise in "
        "BitNetMCU's geometry, every conv unpadded and the first block not pooled (16x16 -> "
        "14 -> 12 -> 6 -> 4 -> 2)")
    bias: bool = option(True, doc="cnn, conv1d, mlp: conv and dense layers have biases; false: "
                        "none (BitNetMCU's: an integer model then keeps no int32 bias per "
                        "output channel in flash)")
    cell: Literal["rnn", "gru", "lstm"] = option("rnn", doc="rnn: recurrent cell (rnn = Elman "
                                               "tanh, Keras' SimpleRNN)")
    hidden_size: int = option(128, in_range(1), "rnn: hidden units of each recurrent layer")
    embed_dim: int = option(128, in_range(1), "rnn on tokens, recsys: embedding dimension")
    buckets: int = option(1000, in_range(2), "recsys: rows of each categorical column's "
                        "embedding table: bucket ids fold onto them (id mod (buckets - 1), "
                        "bucket 0 kept), so fewer rows share them; at most data.num_buckets")
    interaction: Literal["mlp", "dot"] = option(
        "mlp", doc="recsys: mlp: an MLP over the concatenated embeddings (and the numeric "
        "features' dense vector); dot: DLRM's pairwise dot products of those vectors, beside "
        "the numeric vector, into the MLP")

    def dense_widths(self, layers: int) -> tuple[int, ...]:
        """The widths of ``layers`` hidden dense layers, first to last: ``dense_units``, then
        each ``dense_taper`` times the one before (at least 1)."""
        widths = [self.dense_units]
        while len(widths) < layers:
            widths.append(max(1, round(widths[-1] * self.dense_taper)))
        return tuple(widths[:layers])


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(5, in_range(1), "dense training epochs (before weight pruning)")
    batch_size: int = option(128, in_range(1), "per-worker batch size")
    optimizer: Literal["adam", "adamw", "sgd"] = option("adam", doc="adam/sgd: L2 is coupled "
                                                      "weight decay; adamw: decoupled")
    lr: float = option(1e-3, in_range(0, lo_open=True), "learning rate")
    momentum: float = option(0.9, in_range(0, 1, hi_open=True), "sgd momentum")
    schedule: Literal["constant", "cosine"] = option("constant", doc="learning-rate schedule "
                                                   "over the dense epochs")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", doc="auto: bf16 on GPUs that have it, else fp16 + loss scaling; on CPU bf16 "
        "where measured faster than fp32")
    channels_last: bool = option(True, doc="cnn: channels-last memory format")
    num_workers: int = option(1, in_range(1), "Ray Train workers (DDP ranks)")
    use_gpu: bool = option(False, doc="a GPU (or a share of one) per worker")
    gpus_per_worker: float = option(1.0, in_range(0, 1, lo_open=True), "with use_gpu: GPU share "
                                  "each worker holds; 0.25 lets four small trials share a GPU")
    tf32: bool = option(False, doc="CUDA: float32 matmuls/convolutions as TF32 (faster on "
                      "Ampere+, ~1e-3 relative error); recorded in the metrics")
    warmup_steps: int = option(0, in_range(0), "linear learning-rate warm-up over the first steps "
                             "of dense training (large batches)")
    cpus_per_worker: float = option(2.0, in_range(0, lo_open=True), "CPUs each worker holds")
    seed: int = option(0, in_range(0), "seed of weights, shuffling, dropout and augmentation")
    max_failures: int = option(1, in_range(0), "restarts of a failed trial (or worker group) from "
                             "its last epoch checkpoint")
    executor: Literal["auto", "trial_actor", "ray_train"] = option(
        "auto", doc="where a search trial trains. trial_actor: in its own Tune trial actor, "
        "holding the worker's resources (no worker group to start: ~0.1 s instead of ~12 s "
        "per trial; `distopt train`: in the command's own process, without Ray); ray_train: "
        "a Ray Train TorchTrainer job (DDP). auto: trial_actor for one CPU worker, ray_train "
        "for several workers or GPUs")
    early_stop_patience: int = option(0, in_range(0), "end dense training when validation "
                                     "accuracy has not improved for this many epochs; 0 = off")
    grad_clip: float = option(0.0, in_range(0), "max global gradient norm; 0 = off (helps rnn "
                            "cells)")
    max_steps_per_epoch: int | None = option(None, Rule(lambda v: v is None or v >= 1,
                                           "must be null or >= 1"), "cap on steps per epoch")
    distill_alpha: float = option(0.0, in_range(0, 1), "knowledge distillation: loss = (1 - alpha)"
                                " x cross-entropy + alpha x T^2 x KL(teacher || student) at "
                                "temperature T; 0 = off")
    distill_temperature: float = option(4.0, in_range(0, lo_open=True), "distillation "
                                      "temperature T")
    teacher_overrides: dict[str, Any] = option({}, doc="what the teacher changes from this config "
                                             "(dotted keys, e.g. model.preset: seed_cnn); it "
                                             "trains densely in float32, once per search")
    teacher_path: str | None = option(None, doc="the teacher's .dopt file (path or URI); a search "
                                    "or `distopt train` sets it to the teacher it trained")


@dataclass(frozen=True)
class RegularizationConfig:
    l1: float = option(0.0, in_range(0), "L1 penalty on weights (not biases); 0 = off")
    l2: float = option(0.0, in_range(0), "L2 weight decay; 0 = off")
    dropout: float = option(0.0, in_range(0, 1, hi_open=True), "dropout before dense layers")


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = option(0.0, in_range(0, 180), "max rotation, degrees (uniform +-)")
    shift: float = option(0.0, in_range(0, 1, hi_open=True), "max shift, fraction of width/height")
    shear: float = option(0.0, in_range(0, 89), "max shear angle, degrees (uniform +-; Keras units)")
    zoom: float = option(0.0, in_range(0, 1, hi_open=True), "zoom in [1-z, 1+z], x and y drawn "
                       "independently")
    prob: float = option(1.0, in_range(0, 1), "images, signals: the chance that a training "
                         "sample is transformed (each drawn independently); the rest are seen "
                         "clean. 0.5 with twice the epochs is BitNetMCU's schedule (each epoch "
                         "the clean set plus one augmented copy)")
    token_dropout: float = option(0.0, in_range(0, 1, hi_open=True), "tokens: probability that "
                                "each id is replaced by padding (0)")
    crop: float = option(0.0, in_range(0, 1, hi_open=True), "tokens: up to this fraction of a "
                       "sequence is cut from its start or end (then re-padded)")


BITS = Literal[32, 16, 8, 4, 3, 2]


@dataclass(frozen=True)
class PruneConfig:
    """Weight pruning (:class:`distopt.compress.pruning.WeightPruning`)."""

    ratio: float = option(0.0, in_range(0, 1, hi_open=True),
                        "fraction of weights (unstructured) or channels (structured) removed; "
                        "0 = off")
    kind: Literal["unstructured", "structured"] = option(
        "unstructured", doc="unstructured: global magnitude; structured: L1-norm channels, "
        "layers physically shrink")
    schedule: Literal["oneshot", "gradual"] = option(
        "oneshot", doc="unstructured: oneshot prunes to ratio at once; gradual raises "
        "sparsity over the fine-tune epochs (cubic, Zhu & Gupta 2017)")

    @property
    def fine_tunes(self) -> bool:
        return self.ratio > 0


@dataclass(frozen=True)
class QuantizeConfig:
    """Weight quantization (:class:`distopt.compress.quantization.WeightQuantization`): codes
    every weight no other method codes."""

    bits: BITS = option(8, doc="weight bits in the artifact: 32 = float32; 16/8/4/3 = symmetric "
                      "per-output-channel integers; 2 = ternary {-1, 0, 1} x a per-channel "
                      "scale")
    qat: bool = option(False, doc="fine-tune with weights quantized to their bits in every "
                     "forward (straight-through), so the artifact's rounding is trained for "
                     "(compress.finetune_epochs of them; with or without pruning)")
    bits_first_conv: BITS | None = option(None, doc="mixed bit widths: weight bits of the first "
                                          "conv layer; null: bits")
    bits_conv: BITS | None = option(None, doc="weight bits of the other conv layers; null: bits")
    bits_dense: BITS | None = option(None, doc="weight bits of hidden dense layers (and rnn: "
                                     "recurrent and embedding weights); null: bits")
    bits_last_dense: BITS | None = option(None, doc="weight bits of the last hidden dense layer "
                                          "of two or more (BitNetMCU's 4-bit layer after a "
                                          "2-bit one); null: bits_dense, else bits")
    bits_classifier: BITS | None = option(None, doc="weight bits of the last (classifier) "
                                          "layer; null: bits")
    bits_embedding: BITS | None = option(None, doc="weight bits of embedding tables (recsys' "
                                         "rows, rnn's token table); null: bits_dense, else bits")
    scales: Literal["channel", "tensor"] = option("channel", doc="integer weights' scales: one "
        "per output channel (per column for tables), or one per tensor (BitNetMCU's: flash keeps "
        "one float32 scale, or int32 multiplier + int8 shift, a layer instead of a channel)")
    odd_levels: bool = option(False, doc="weights at 4 bits or fewer take 2**bits levels without "
                              "a zero (BitNetMCU's 2bitsym and 4bitsym: {-1.5, -0.5, 0.5, 1.5} x "
                              "a step at 2 bits, not ternary); no pruning beside it")
    activation_bits: Literal[8] | None = option(
        None, doc="8: an integer-only model (TFLite's int8 scheme: activations int8 per tensor, "
        "calibrated on training inputs and trained for in fine-tune epochs; int32 accumulators, "
        "fixed-point requantization); every reported accuracy is its integer reference's. "
        "Needs integer weights (bits 8 or fewer, no cluster.k) and family cnn, conv1d or mlp; "
        "null: float activations")

    @property
    def fine_tunes(self) -> bool:
        """QAT opens the fine-tune itself: low-bit weights (BitNetMCU's 2/4-bit layers) are
        trained for without pruning or clustering anything."""
        return self.qat and {self.bits, *self.layer_bits.values()} != {32}

    @property
    def layer_bits(self) -> dict[str, int]:
        """Bits of each layer kind (``first_conv``, ``conv``, ``dense``, ``classifier``:
        :func:`distopt.models.layer_kinds`) that has its own."""
        return {kind: bits for kind, bits in (
            ("first_conv", self.bits_first_conv), ("conv", self.bits_conv),
            ("dense", self.bits_dense), ("classifier", self.bits_classifier),
            ("last_dense", self.bits_dense if self.bits_last_dense is None
             else self.bits_last_dense),
            ("embedding", self.bits_embedding if self.bits_embedding is not None
             else self.bits_dense))
            if bits is not None}

    def bits_of(self, kind: str) -> int:
        """Weight bits of a layer kind."""
        return self.layer_bits.get(kind, self.bits)


@dataclass(frozen=True)
class RowPruneConfig:
    """Embedding row pruning (:class:`distopt.compress.row_pruning.RowPruning`)."""

    ratio: float = option(0.0, in_range(0, 1, hi_open=True), "fraction of every embedding "
                        "table's rows set to zero (the lowest L2 norms: ids seldom or never "
                        "seen in training) and held at zero while fine-tuning; 0 = off")

    @property
    def fine_tunes(self) -> bool:
        return self.ratio > 0


@dataclass(frozen=True)
class ClusterConfig:
    """Weight clustering (:class:`distopt.compress.clustering.WeightClustering`)."""

    k: int = option(0, in_range(0, 4096), "Deep Compression's weight sharing: k shared values "
                  "per weight tensor (k-means on its non-zero weights, then fine-tuned as shared "
                  "centroids, stored as a codebook); 0 = off")

    @property
    def fine_tunes(self) -> bool:
        return self.k > 0


@dataclass(frozen=True)
class CompressConfig:
    """What a trial does after dense training: the fine-tune the methods share, and one section
    per compression method (each read by its method alone, :mod:`distopt.compress.method`).
    Everything under ``compress`` acts after dense training, which is what lets trials that
    differ only here share a dense model (``search.reuse_dense``, ``search.children``)."""

    # The flat keys before each method had its section (compress.prune_ratio, ...): still
    # read, as the keys they name now.
    ALIASES: ClassVar[dict[str, str]] = {
        "prune_ratio": "prune.ratio", "prune_kind": "prune.kind", "schedule": "prune.schedule",
        "quant_bits": "quantize.bits", "qat": "quantize.qat",
        "bits_first_conv": "quantize.bits_first_conv", "bits_conv": "quantize.bits_conv",
        "bits_dense": "quantize.bits_dense", "bits_classifier": "quantize.bits_classifier",
        "clusters": "cluster.k"}

    finetune_epochs: int = option(1, in_range(0), "epochs of training after dense training, "
                                "run when a method fine-tunes (pruning, clustering), its "
                                "constraints held")
    finetune_lr_scale: float = option(0.5, in_range(0, lo_open=True), "fine-tune lr = lr x this")
    finetune_schedule: Literal["constant", "cosine"] = option(
        "constant", doc="learning-rate schedule over the fine-tune epochs (cosine: from the "
        "fine-tune lr to 0, what a long quantization-aware fine-tune wants)")
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    prune_rows: RowPruneConfig = field(default_factory=RowPruneConfig)

    @property
    def fine_tunes(self) -> bool:
        """Whether the fine-tune epochs run: a method section asks for them and
        ``finetune_epochs`` >= 1. What the config checks read; a run asks its methods
        (``distopt.training.compression.Compression``), which agree for the built-in ones
        (tested) and may add a user's method that fine-tunes."""
        return self.finetune_epochs > 0 and any(
            getattr(self, f.name).fine_tunes for f in dataclasses.fields(self)
            if dataclasses.is_dataclass(getattr(self, f.name)))
