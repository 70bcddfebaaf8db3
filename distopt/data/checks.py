"""The driver's check of a user's Parquet data, before Ray starts: every problem at once, each
naming the file, the column and an example row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from distopt.config import DataConfig
from distopt.data.parquet import expand, is_bytes, is_list, read_table
from distopt.data.splits import DataError
from distopt.data.tabular import is_categorical

__all__ = ["check_parquet_data"]



def _example(table: pa.Table, mask: np.ndarray, column: str) -> str:
    """Row index and value of the first row where ``mask`` holds."""
    i = int(np.flatnonzero(mask)[0])
    value = table.column(column)[i].as_py()
    text = repr(value)
    return f"row {i}: {text[:60] + '...' if len(text) > 60 else text}"


def _check_labels(table: pa.Table, cfg: DataConfig, path: Path) -> tuple[list[str], np.ndarray]:
    col = table.column(cfg.label_column)
    problems: list[str] = []
    nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
    if nulls.any():
        problems.append(f"{path}: column {cfg.label_column!r} has {int(nulls.sum())} null "
                        f"label(s), e.g. {_example(table, nulls, cfg.label_column)}")
    if not pa.types.is_integer(col.type):
        problems.append(f"{path}: column {cfg.label_column!r} has type {col.type}; labels must "
                        f"be integers in [0, {cfg.num_classes}) (data.num_classes), e.g. "
                        f"{_example(table, ~nulls if (~nulls).any() else nulls, cfg.label_column)}")
        return problems, np.empty(0, np.int64)
    y = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    bad = ~nulls & ((y < 0) | (y >= cfg.num_classes))
    if bad.any():
        problems.append(f"{path}: column {cfg.label_column!r} has {int(bad.sum())} label(s) "
                        f"outside [0, {cfg.num_classes}) (data.num_classes), e.g. "
                        f"{_example(table, bad, cfg.label_column)}")
    return problems, y[~nulls & ~bad]


def _check_features(table: pa.Table, cfg: DataConfig, path: Path) -> list[str]:
    col = table.column(cfg.feature_column).combine_chunks()
    name = cfg.feature_column
    nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
    problems = [f"{path}: column {name!r} has {int(nulls.sum())} null row(s), e.g. "
                f"{_example(table, nulls, name)}"] if nulls.any() else []
    if cfg.kind == "tokens":
        return problems  # ids: read_parquet_tokens checks type and range on every reader
    n_feat = int(np.prod(cfg.shape))
    if is_bytes(col.type):
        lengths = np.array([len(v) if v is not None else n_feat for v in col.to_pylist()])
        wrong = lengths != n_feat
    elif is_list(col.type):
        lengths = np.asarray(col.value_lengths().fill_null(n_feat).to_numpy(
            zero_copy_only=False))
        wrong = lengths != n_feat
        values = col.flatten()
        if pa.types.is_floating(values.type):
            v = values.to_numpy(zero_copy_only=False)
            bad_values = ~np.isfinite(v)
            if bad_values.any():
                row_of = np.repeat(np.arange(len(col)), lengths)[:len(v)]
                rows = np.zeros(len(col), bool)
                rows[row_of[bad_values]] = True
                problems.append(f"{path}: column {name!r} holds {int(bad_values.sum())} NaN or "
                                f"infinite value(s) in {int(rows.sum())} row(s), e.g. row "
                                f"{int(np.flatnonzero(rows)[0])}; clean or drop them")
        elif not pa.types.is_integer(values.type):
            return problems + [f"{path}: column {name!r} holds {values.type}; features must be "
                               "numbers"]
    else:
        return problems + [f"{path}: column {name!r} has type {col.type}; expected a list of "
                           "numbers or binary image bytes"]
    if wrong.any():
        problems.append(f"{path}: column {name!r} has {int(wrong.sum())} row(s) whose length is "
                        f"not {n_feat} (data.shape {list(cfg.shape)}), e.g. row "
                        f"{int(np.flatnonzero(wrong)[0])} of length "
                        f"{int(lengths[np.flatnonzero(wrong)[0]])}")
    return problems


def _check_tabular(table: pa.Table, cfg: DataConfig, path: Path) -> list[str]:
    """Categorical columns hold integers or strings; numeric ones numbers, none null or not
    finite."""
    problems = []
    for name in cfg.categorical:
        t = table.column(name).type
        if not is_categorical(t):
            problems.append(f"{path}: categorical column {name!r} has type {t}; expected "
                            "integers or strings (data.categorical_columns)")
    for name in cfg.numeric:
        col = table.column(name)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            problems.append(f"{path}: numeric column {name!r} has type {col.type}; expected "
                            f"numbers (data.numeric_columns), e.g. "
                            f"{_example(table, np.ones(len(col), bool), name)}")
            continue
        nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        values = col.fill_null(0).to_numpy().astype(np.float64)
        bad = nulls | ~np.isfinite(values)
        if bad.any():
            problems.append(f"{path}: numeric column {name!r} has {int(bad.sum())} null, NaN "
                            f"or infinite value(s), e.g. {_example(table, bad, name)}; fill "
                            "or drop them")
    return problems


def check_parquet_data(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """Every problem with a user's Parquet training and test files, found on the driver before
    anything starts (reading only the columns it uses): schema, label type, range and nulls,
    feature lengths, nulls and non-finite values (tabular: column types, numbers' nulls and
    non-finite values), enough rows for a validation split with one
    row per class, and at least two classes in training. Returns ``(problems, warnings)``;
    warnings name classes missing from the training files."""
    if cfg.name != "parquet" or not cfg.path:
        return [], []
    problems: list[str] = []
    labels: list[np.ndarray] = []
    groups = [("training", cfg.path)] + ([("test", cfg.test_path)] if cfg.test_path else [])
    for role, pattern in groups:
        try:
            files = expand(pattern)
        except DataError as e:
            problems.append(str(e))
            continue
        for path in files:
            tabular = cfg.kind == "tabular"
            columns = (*cfg.categorical, *cfg.numeric) if tabular else (cfg.feature_column,)
            try:
                table = read_table(path, (*columns, cfg.label_column))
            except DataError as e:
                problems.append(str(e))
                continue
            label_problems, y = _check_labels(table, cfg, path)
            problems += label_problems + (_check_tabular(table, cfg, path) if tabular
                                          else _check_features(table, cfg, path))
            if role == "training":
                labels.append(y)
    warnings: list[str] = []
    if labels and not problems:
        y = np.concatenate(labels)
        present = np.unique(y)
        n_val = max(1, int(round(cfg.val_fraction * len(y))))
        if len(present) < 2:
            problems.append(f"data.path: the training files hold {len(y)} row(s) of "
                            f"{len(present)} class(es) ({present.tolist()}); a classifier needs "
                            "at least 2")
        elif n_val < cfg.num_classes or len(y) - n_val < cfg.num_classes:
            problems.append(f"data.path: {len(y)} training row(s) give a validation split of "
                            f"{n_val} (data.val_fraction {cfg.val_fraction:g}); with "
                            f"{cfg.num_classes} classes both parts need at least one row per "
                            "class: add rows or raise data.val_fraction")
        missing = sorted(set(range(cfg.num_classes)) - set(present.tolist()))
        if missing and len(present) >= 2:
            warnings.append(f"data.path: class(es) {missing[:20]} of data.num_classes "
                            f"{cfg.num_classes} never occur in the training files")
    return problems, warnings


