"""The configured data set as :class:`~distopt.data.splits.Splits`, with a deterministic
validation split carved from training and a digest that identifies the data in manifests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from distopt.config import DataConfig
from distopt.config import CLICKS_LABEL
from distopt.data.builtin import (SIGNALS_MINI_TEST, SIGNALS_MINI_TRAIN, TOKENS_MINI_TEST,
                                  TOKENS_MINI_TRAIN, generate_signals, generate_tokens, load_mini)
from distopt.data.clicks import CLICKS_MINI_TEST, CLICKS_MINI_TRAIN, generate_clicks
from distopt.data.mnist import load_mnist_arrays
from distopt.data.parquet import expand, read_parquet_arrays, read_parquet_tokens
from distopt.data.splits import Splits
from distopt.data.tabular import encode_table, read_parquet_tabular

__all__ = ["load_splits"]


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:16]


def _train_test(cfg: DataConfig, read: Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A user's Parquet training files and test files (none: an empty test set) through
    ``read``."""
    assert cfg.path is not None
    x_tr, y_tr = read(expand(cfg.path))
    x_te, y_te = read(expand(cfg.test_path)) if cfg.test_path else (x_tr[:0], y_tr[:0])
    return x_tr, y_tr, x_te, y_te


def load_splits(cfg: DataConfig) -> Splits:
    """Load the configured dataset and carve a deterministic validation split from training.

    The test set is returned for final reports only; nothing selects on it."""
    if cfg.name == "mnist-mini":
        x_tr, y_tr, x_te, y_te = load_mini()
    elif cfg.name == "mnist":
        x_tr, y_tr, x_te, y_te = load_mnist_arrays(cfg)
    elif cfg.name == "tokens-mini":
        x, y = generate_tokens(TOKENS_MINI_TRAIN + TOKENS_MINI_TEST, cfg.vocab_size, cfg.max_len,
                               cfg.num_classes, seed=0)
        x_tr, y_tr = x[:TOKENS_MINI_TRAIN], y[:TOKENS_MINI_TRAIN]
        x_te, y_te = x[TOKENS_MINI_TRAIN:], y[TOKENS_MINI_TRAIN:]
    elif cfg.name == "signals-mini":
        x, y = generate_signals(SIGNALS_MINI_TRAIN + SIGNALS_MINI_TEST, seed=0)
        x_tr, y_tr = x[:SIGNALS_MINI_TRAIN], y[:SIGNALS_MINI_TRAIN]
        x_te, y_te = x[SIGNALS_MINI_TRAIN:], y[SIGNALS_MINI_TRAIN:]
    elif cfg.name == "clicks-mini":
        table = generate_clicks(CLICKS_MINI_TRAIN + CLICKS_MINI_TEST, seed=0)
        x = encode_table(table, cfg.categorical, cfg.numeric, cfg.buckets_of, cfg.name)
        y = table.column(CLICKS_LABEL).to_numpy().astype(np.int64)
        x_tr, y_tr = x[:CLICKS_MINI_TRAIN], y[:CLICKS_MINI_TRAIN]
        x_te, y_te = x[CLICKS_MINI_TRAIN:], y[CLICKS_MINI_TRAIN:]
    elif cfg.kind == "tabular":
        x_tr, y_tr, x_te, y_te = _train_test(cfg, lambda paths: read_parquet_tabular(
            paths, cfg.categorical, cfg.numeric, cfg.label_column, cfg.buckets_of,
            cfg.num_classes))
    elif cfg.kind == "tokens":
        x_tr, y_tr, x_te, y_te = _train_test(cfg, lambda paths: read_parquet_tokens(
            paths, cfg.feature_column, cfg.label_column, cfg.max_len, cfg.vocab_size,
            cfg.num_classes))
    else:
        x_tr, y_tr, x_te, y_te = _train_test(cfg, lambda paths: read_parquet_arrays(
            paths, cfg.feature_column, cfg.label_column, cfg.shape, cfg.num_classes))
    perm = np.random.default_rng(cfg.split_seed).permutation(len(x_tr))
    n_val = max(1, int(round(cfg.val_fraction * len(x_tr))))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Splits(x_tr[train], y_tr[train], x_tr[val], y_tr[val], x_te, y_te,
                  _digest(x_tr, y_tr, x_te, y_te),
                  len(cfg.categorical) if cfg.kind == "tabular" else None)
