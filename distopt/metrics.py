"""Metric names and their directions, defined once.

The trainer reports these keys, the search optimizes them and the report prints them. Importing
the names from here (never spelling the strings) is what keeps the three in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["max", "min"]

# Per-epoch training metrics, aggregated over all ranks.
EPOCH = "epoch"
PHASE = "phase"  # "train" (dense), "finetune" (masks held) or "final" (decoded artifact)
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"  # eval mode on a fixed training subset (no dropout/augmentation)
TRAIN_ACCURACY_RUNNING = "train_accuracy_running"  # on the epoch's augmented, dropout batches
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
# Binary labels (data.num_classes 2): ranking quality and calibration, what a click model is
# judged by. VAL_LOGLOSS is the validation cross-entropy (VAL_LOSS) under the name the field
# uses; VAL_AUC the area under the ROC curve of the positive class's probability.
VAL_AUC = "val_auc"
VAL_LOGLOSS = "val_logloss"
VAL_SAMPLES = "val_samples"  # validation rows val_accuracy is over (the chance-level check)
GAP = "train_val_gap"  # train_accuracy - val_accuracy: > 0 means overfitting
SAMPLES_PER_S = "samples_per_s"

# Model and artifact metrics. In the final report VAL_ACCURACY is the decoded artifact's.
SIZE_BYTES = "size_bytes"
PARAMS = "params"
NONZERO_PARAMS = "nonzero_params"
DENSE_FP32_BYTES = "dense_fp32_bytes"
COMPRESSION_RATIO = "compression_ratio"
# Where the artifact's bytes go (format v2; they add up to SIZE_BYTES): the header (wrapper,
# spec, per-tensor entries, meta), the index of non-zero positions, the scales and biases, and
# the weight values.
BYTES_HEADER = "bytes_header"
BYTES_INDEX = "bytes_index"
BYTES_SCALES = "bytes_scales_biases"
BYTES_VALUES = "bytes_values"
# What a device pays to run the decoded model in place (distopt.compress.flash,
# distopt.models.cost): SIZE_BYTES is the storage/download size, these are the device's.
FLASH_BYTES = "flash_bytes"  # packed weight codes + float32 scales, codebooks and biases
WEIGHT_FLASH_BYTES = "weight_flash_bytes"  # the packed weight codes alone (papers' unit)
PEAK_RAM_BYTES = "peak_ram_bytes"  # largest input + output buffer of any layer, batch 1
MACS = "macs"  # multiply-accumulates of one inference
NONZERO_MACS = "nonzero_macs"  # ... of the non-zero weights only (a zero-skipping kernel)
# ... of FLASH_BYTES, the embedding tables' (codes and scales): where a recommendation model's
# bytes are
EMBEDDING_FLASH_BYTES = "embedding_flash_bytes"
DEVICE_METRICS = (FLASH_BYTES, WEIGHT_FLASH_BYTES, PEAK_RAM_BYTES, MACS, NONZERO_MACS)
TEST_ACCURACY = "test_accuracy"
TEST_AUC = "test_auc"
TEST_LOGLOSS = "test_logloss"
# A search's quality objective and the test metric reported beside it: the first objective
# that is one of these keys (val_accuracy where none is) is what the report, the front's
# selection and the final stage rank models by.
QUALITY_TEST: dict[str, str] = {VAL_ACCURACY: TEST_ACCURACY, VAL_AUC: TEST_AUC,
                                 VAL_LOGLOSS: TEST_LOGLOSS}
QUALITY_LABEL: dict[str, str] = {VAL_ACCURACY: "acc", VAL_AUC: "AUC", VAL_LOGLOSS: "log loss"}
LATENCY_MS = "latency_ms"  # PyTorch, batch 1, one thread, median after warm-up
ORT_LATENCY_MS = "ort_latency_ms"  # the same on ONNX Runtime (measured when it is an objective)
ONNX_BYTES = "onnx_bytes"  # length of the exported .onnx file (distopt export)
PRECISION = "precision"
TF32 = "tf32"  # whether float32 matmuls/convolutions ran as TF32 (CUDA only)
TRAIN_SECONDS = "train_seconds"  # inside fit(): data loading, training, export, evaluation
DENSE_EPOCHS = "dense_epochs"  # dense epochs trained (fewer than train.epochs if early-stopped)
EARLY_STOPPED = "early_stopped"  # dense training ended on a validation plateau
OVER_BUDGET = "over_budget"  # search.constraints a model breaks, as text ("" if none)
RESUMED_FROM = "resumed_from_epoch"  # the epoch checkpoint a restarted run went on from; -1

# Bytes the artifact would have if the trial ended now (its pruning and bit width applied to
# the current dense weights, without fine-tuning): what early stopping ranks size by at a rung.
EXPECTED_SIZE_BYTES = "expected_size_bytes"

# Files of an experiment directory that more than one module reads or writes.
ARTIFACT_FILE = "model.dopt"  # a trial's artifact, in its final checkpoint
METRICS_FILE = "metrics.json"  # ... and its final metrics beside it (`distopt train`: output)
CHILD_ARTIFACT = "child_{index}.dopt"  # its children's (search.children), beside it
MANIFEST_FILE = "manifest.json"  # the front's models, their configs and metrics
TEACHER_FILE = "teacher.dopt"  # distillation: the teacher a search or `distopt train` trained
ONNX_DIR = "onnx"  # distopt export: <trial_id>.onnx per front model

# Train once, compress many: a trial's final result lists its children (JSON); their rows in
# trials.parquet name the trial they forked from.
CHILDREN = "children"
PARENT_ID = "parent_id"
# ... and across trials (search.reuse_dense): the trial whose stored dense model a trial
# fine-tuned instead of training its own ("" if it trained it); the store's directory.
DENSE_FROM = "dense_from"
DENSE_DIR = "dense"

# Per-trial timing, from the driver (trials.parquet).
TRIAL_WALL_S = "trial_wall_s"  # Tune's trial start (its actor up) to its last result
OVERHEAD_S = "overhead_s"  # TRIAL_WALL_S - TRAIN_SECONDS: start-up, teardown, reporting


@dataclass(frozen=True)
class Objective:
    """A metric that a search can optimize, with the direction that makes it better."""

    name: str
    direction: Direction
    description: str


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(VAL_ACCURACY, "max", "validation accuracy of the model decoded from its artifact"),
        Objective(VAL_AUC, "max", "binary labels: ROC AUC on validation of the model decoded "
                  "from its artifact"),
        Objective(VAL_LOGLOSS, "min", "binary labels: validation log loss (cross-entropy) of "
                  "the model decoded from its artifact"),
        Objective(SIZE_BYTES, "min", "length in bytes of the exported artifact file"),
        Objective(LATENCY_MS, "min", "median CPU batch-1 latency of the decoded artifact"),
        Objective(ORT_LATENCY_MS, "min", "median CPU batch-1 latency of the exported ONNX "
                  "model on ONNX Runtime (needs distopt[onnx])"),
        Objective(NONZERO_PARAMS, "min", "parameters left non-zero after weight pruning"),
        Objective(FLASH_BYTES, "min", "flash a device needs to run the decoded model in place: "
                  "packed weight codes, float32 scales, codebooks and biases"),
        Objective(WEIGHT_FLASH_BYTES, "min", "the packed weight codes alone (the unit of "
                  "BitNetMCU and most tiny-model papers)"),
        Objective(PEAK_RAM_BYTES, "min", "largest input + output activation buffer of any "
                  "layer, batch 1, float32 activations"),
        Objective(MACS, "min", "multiply-accumulates of one inference"),
        Objective(NONZERO_MACS, "min", "multiply-accumulates of the non-zero weights only"),
    )
}

DEFAULT_OBJECTIVES: tuple[tuple[str, Direction], ...] = (
    (VAL_ACCURACY, "max"),
    (SIZE_BYTES, "min"),
)

# At a rung of early stopping, an objective is read from this key instead (the final value is
# not known before the end): the value of the file the trial would export then (its
# compression applied to the current dense weights); objectives not listed here and not
# reported are left out there.
RUNG_KEYS: dict[str, str] = {SIZE_BYTES: EXPECTED_SIZE_BYTES,
                             **{k: f"expected_{k}" for k in DEVICE_METRICS}}

def quality(objectives: tuple[tuple[str, Direction], ...] | list[tuple[str, str]]
            ) -> tuple[str, Direction]:
    """The quality objective of a search's objectives and its direction: the first of
    :data:`QUALITY_TEST`'s keys among them, else ``val_accuracy`` (maximized)."""
    for name, _ in objectives:
        if name in QUALITY_TEST:
            return name, OBJECTIVES[name].direction
    return VAL_ACCURACY, "max"


# Keys that every report carries, so that Tune's strict metric check passes on every result.
# Before the final report the artifact metrics are NaN ("not known yet").
ALWAYS_REPORTED: tuple[str, ...] = (EPOCH, VAL_ACCURACY, VAL_AUC, VAL_LOGLOSS, SIZE_BYTES,
                                    LATENCY_MS, ORT_LATENCY_MS, NONZERO_PARAMS, *DEVICE_METRICS,
                                    *RUNG_KEYS.values())
