"""Bring-your-own Parquet: image features (fixed-size lists or raw bytes) or token sequences,
with an integer label column; only those two columns are read, after the file's metadata shows
they exist, that it has rows and that they fit in memory."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distopt.data.splits import DataError

__all__ = ["expand", "is_bytes", "is_list", "labels", "pad_tokens", "read_parquet_arrays",
           "read_parquet_tokens", "read_table"]



def expand(pattern: str) -> list[Path]:
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.parquet"))
    elif any(ch in pattern for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p)))
    else:
        files = [p]
    if not files:
        raise DataError(f"{pattern}: no Parquet files found")
    return files


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def read_table(path: Path, columns: Sequence[str]) -> pa.Table:
    """Only ``columns`` of a Parquet file, after checking from its metadata alone that they
    exist, that it has rows and that they fit in memory: other columns are never read."""
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {names}")
    meta = pf.metadata
    if meta.num_rows == 0:
        raise DataError(f"{path}: has no rows")
    needed = sum(rg.column(j).total_uncompressed_size
                 for rg in (meta.row_group(i) for i in range(meta.num_row_groups))
                 for j in range(rg.num_columns)
                 if rg.column(j).path_in_schema.split(".")[0] in columns)
    if needed > _memory_bytes() // 2:
        raise DataError(f"{path}: columns {list(columns)} hold {needed:,} bytes uncompressed, "
                        f"more than half of this machine's memory; split the file")
    try:
        return pf.read(columns=list(columns))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def labels(table: pa.Table, label_column: str, num_classes: int, path: Path) -> np.ndarray:
    y_col = table.column(label_column)
    if not pa.types.is_integer(y_col.type):
        raise DataError(f"{path}: label column {label_column!r} has type {y_col.type}; "
                        "expected integers")
    y = y_col.to_numpy().astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} label(s) outside [0, {num_classes}), "
                        f"e.g. {int(y[bad][0])}")
    return y


def is_bytes(t: pa.DataType) -> bool:
    """Encoded raw uint8 images: one byte string per row."""
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
        pa.types.is_fixed_size_binary(t)


def is_list(t: pa.DataType) -> bool:
    """A list of numbers (or token ids) per row."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def read_parquet_arrays(paths: Sequence[Path], feature_column: str, label_column: str,
                        shape: Sequence[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read features ``(N, *shape)`` and labels from Parquet, checking every file."""
    xs, ys = [], []
    n_feat = int(np.prod(shape))
    for path in paths:
        table = read_table(path, (feature_column, label_column))
        col = table.column(feature_column).combine_chunks()
        if is_bytes(col.type):
            lengths = {len(v) for v in col.to_pylist()}
            if lengths != {n_feat}:
                raise DataError(f"{path}: column {feature_column!r} holds byte strings of "
                                f"length(s) {sorted(lengths)[:5]}; shape {list(shape)} needs "
                                f"{n_feat}")
            x = np.frombuffer(b"".join(col.to_pylist()), dtype=np.uint8).reshape(-1, *shape)
        elif is_list(col.type):
            flat = col.flatten().to_numpy(zero_copy_only=False)
            if len(flat) != len(col) * n_feat or (
                    not pa.types.is_fixed_size_list(col.type) and
                    np.any(np.diff(col.offsets.to_numpy()) != n_feat)):
                raise DataError(f"{path}: column {feature_column!r} rows are not all of length "
                                f"{n_feat} (shape {list(shape)})")
            x = flat.reshape(-1, *shape)
            x = x if x.dtype == np.uint8 else x.astype(np.float32)
        else:
            raise DataError(f"{path}: column {feature_column!r} has type {col.type}; expected a "
                            "list of numbers or binary image bytes")
        xs.append(x)
        ys.append(labels(table, label_column, num_classes, path))
    dtypes = {x.dtype for x in xs}
    x_all = np.concatenate([x.astype(np.float32) for x in xs]) if len(dtypes) > 1 else \
        np.concatenate(xs)
    return x_all, np.concatenate(ys)


def pad_tokens(seqs: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Pad at the front with 0 / keep the last ``max_len`` ids (Keras' ``pad_sequences``
    defaults), so that a recurrent network's last step always sees real tokens."""
    out = np.zeros((len(seqs), max_len), np.int32)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[i, max_len - len(s):] = s
    return out


def read_parquet_tokens(paths: Sequence[Path], feature_column: str, label_column: str,
                        max_len: int, vocab_size: int, num_classes: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Read token sequences (a list-of-integers column) and labels from Parquet, padded or cut
    to ``max_len``; ids outside ``[0, vocab_size)`` are an error naming the file."""
    xs, ys = [], []
    for path in paths:
        table = read_table(path, (feature_column, label_column))
        col = table.column(feature_column).combine_chunks()
        if not is_list(col.type) or \
                not pa.types.is_integer(col.type.value_type):
            raise DataError(f"{path}: column {feature_column!r} has type {col.type}; token "
                            "sequences need a list of integers")
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        bad = (flat < 0) | (flat >= vocab_size)
        if bad.any():
            raise DataError(f"{path}: {int(bad.sum())} token id(s) outside [0, {vocab_size}) "
                            f"(data.vocab_size), e.g. {int(flat[bad][0])}")
        offsets = (np.arange(len(col) + 1) * col.type.list_size
                   if pa.types.is_fixed_size_list(col.type) else col.offsets.to_numpy())
        xs.append(pad_tokens([flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])], max_len))
        ys.append(labels(table, label_column, num_classes, path))
    return np.concatenate(xs), np.concatenate(ys)


