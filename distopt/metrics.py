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
GAP = "train_val_gap"  # train_accuracy - val_accuracy: > 0 means overfitting
SAMPLES_PER_S = "samples_per_s"

# Model and artifact metrics. In the final report VAL_ACCURACY is the decoded artifact's.
SIZE_BYTES = "size_bytes"
PARAMS = "params"
NONZERO_PARAMS = "nonzero_params"
DENSE_FP32_BYTES = "dense_fp32_bytes"
COMPRESSION_RATIO = "compression_ratio"
TEST_ACCURACY = "test_accuracy"
LATENCY_MS = "latency_ms"
PRECISION = "precision"
TF32 = "tf32"  # whether float32 matmuls/convolutions ran as TF32 (CUDA only)


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
        Objective(SIZE_BYTES, "min", "length in bytes of the exported artifact file"),
        Objective(LATENCY_MS, "min", "median CPU batch-1 latency of the decoded artifact"),
        Objective(NONZERO_PARAMS, "min", "parameters left non-zero after weight pruning"),
    )
}

DEFAULT_OBJECTIVES: tuple[tuple[str, Direction], ...] = (
    (VAL_ACCURACY, "max"),
    (SIZE_BYTES, "min"),
)

# Keys that every report carries, so that Tune's strict metric check passes on every result.
# Before the final report the artifact metrics are NaN ("not known yet").
ALWAYS_REPORTED: tuple[str, ...] = (EPOCH, VAL_ACCURACY, SIZE_BYTES, LATENCY_MS, NONZERO_PARAMS)
