"""The schema of ``trials.parquet``, one row per trial, child and duplicate: the column names and
statuses written by the search (:mod:`distopt.orchestration.collect`) and by the final stages,
and read by the report, the CLI and the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distopt import metrics as M

__all__ = ["AT_CHANCE", "BREAKDOWN", "DUPLICATE", "DUPLICATE_OF", "FINAL_METRICS", "SEEDS", "STOPPED",
           "OVER_BUDGET", "TEST_MEAN", "TEST_SD", "TRIALS", "UNFINISHED", "WITHIN_NOISE", "load_trials",
           "write_trials"]

TRIALS = "trials.parquet"
BREAKDOWN = (M.BYTES_HEADER, M.BYTES_INDEX, M.BYTES_SCALES, M.BYTES_VALUES)  # adds to SIZE_BYTES
FINAL_METRICS = (M.VAL_ACCURACY, M.VAL_AUC, M.VAL_LOGLOSS, M.VAL_LOSS, M.TRAIN_ACCURACY, M.GAP,
                 M.SIZE_BYTES, M.PARAMS,
                 M.NONZERO_PARAMS, M.DENSE_FP32_BYTES, M.COMPRESSION_RATIO, M.LATENCY_MS,
                 M.ORT_LATENCY_MS, M.EPOCH, M.TRAIN_SECONDS, M.DENSE_EPOCHS, "time_total_s",
                 M.VAL_SAMPLES, M.RESUMED_FROM, *M.DEVICE_METRICS, M.EMBEDDING_FLASH_BYTES,
                 *BREAKDOWN)
STOPPED = "STOPPED"  # status of a trial early stopping ended (never on the front)
UNFINISHED = "UNFINISHED"  # running or pending when the search stopped (partial reports only)
OVER_BUDGET = "OVER_BUDGET"  # its architecture broke a search.constraints budget: not trained
DUPLICATE = "DUPLICATE"  # sampled values a finished trial had: told its result, not trained
DUPLICATE_OF = "duplicate_of"  # the trial whose result a DUPLICATE row got
AT_CHANCE = "at_chance"  # a complete model no better than guessing (never on the front)
# search.final: the chosen front rows' test accuracy over their final runs, whether its lead is
# within noise, the dense epochs those runs trained, and the largest final.select.metric of
# their files.
TEST_MEAN, TEST_SD, SEEDS, WITHIN_NOISE = ("test_accuracy_mean", "test_accuracy_sd", "seeds",
                                           "within_noise")
FINAL_EPOCHS, FINAL_SIZE = "final_epochs", "final_size_max"


def write_trials(rows: list[dict[str, Any]], output: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), output / TRIALS)


def load_trials(output: Path) -> list[dict[str, Any]]:
    return pq.read_table(output / TRIALS).to_pylist()
