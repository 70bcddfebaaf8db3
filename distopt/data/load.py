"""The configured data set as :class:`~distopt.data.splits.Splits`, with a deterministic
validation split carved from training and a digest that identifies the data in manifests."""

from __future__ import annotations

import hashlib

import numpy as np

from distopt.config import DataConfig
from distopt.data.builtin import (SIGNALS_MINI_TEST, SIGNALS_MINI_TRAIN, TOKENS_MINI_TEST,
                                  TOKENS_MINI_TRAIN, generate_signals, generate_tokens, load_mini)
from distopt.data.mnist import load_mnist_arrays
from distopt.data.parquet import expand, read_parquet_arrays, read_parquet_tokens
from distopt.data.splits import Splits

__all__ = ["load_splits"]


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:16]


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
    elif cfg.kind == "tokens":
        assert cfg.path is not None
        args = (cfg.feature_column, cfg.label_column, cfg.max_len, cfg.vocab_size,
                cfg.num_classes)
        x_tr, y_tr = read_parquet_tokens(expand(cfg.path), *args)
        if cfg.test_path:
            x_te, y_te = read_parquet_tokens(expand(cfg.test_path), *args)
        else:
            x_te, y_te = x_tr[:0], y_tr[:0]
    else:
        assert cfg.path is not None
        x_tr, y_tr = read_parquet_arrays(expand(cfg.path), cfg.feature_column,
                                         cfg.label_column, cfg.shape, cfg.num_classes)
        if cfg.test_path:
            x_te, y_te = read_parquet_arrays(expand(cfg.test_path), cfg.feature_column,
                                             cfg.label_column, cfg.shape, cfg.num_classes)
        else:
            x_te, y_te = x_tr[:0], y_tr[:0]
    perm = np.random.default_rng(cfg.split_seed).permutation(len(x_tr))
    n_val = max(1, int(round(cfg.val_fraction * len(x_tr))))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Splits(x_tr[train], y_tr[train], x_tr[val], y_tr[val], x_te, y_te,
                  _digest(x_tr, y_tr, x_te, y_te))
