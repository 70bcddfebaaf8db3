"""Tabular rows (``data.kind: tabular``): categorical columns hashed into bucket ids, numeric
columns, an integer label. A table becomes one float32 matrix ``(N, categorical + numeric)``:
the bucket ids first (exact integers: float32 holds every integer below 2**24, and
``data.num_buckets`` stays below it), then the numbers as stored. Standardizing the numbers is
the input normalization's job (measured on the training split, stored in the artifact), so an
exported model takes the numbers raw and the bucket ids as :func:`hash_buckets` makes them.

Hashing needs no vocabulary on the device or the server: any value maps to its bucket with
the same function everywhere, and an id never seen in training still gets one (shared with
whatever hashed there). Bucket 0 is out of vocabulary: null values."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from distopt.data.parquet import labels, read_table
from distopt.data.splits import DataError

__all__ = ["OOV_BUCKET", "encode_table", "hash_bucket", "hash_buckets", "is_categorical",
           "read_parquet_tabular"]

OOV_BUCKET = 0


def hash_bucket(value: Any, num_buckets: int) -> int:
    """The bucket of one categorical value: 0 for None (out of vocabulary), else
    ``1 + BLAKE2b-64(text) mod (num_buckets - 1)`` of its text (a string as it is, an integer
    in decimal: 7 and "7" share a bucket). Stable across machines, processes and versions of
    Python (unlike ``hash()``): what a server computes before calling an exported model."""
    if value is None:
        return OOV_BUCKET
    if isinstance(value, bool) or not isinstance(value, (int, str, np.integer)):
        raise TypeError(f"categorical values are integers or strings, got {type(value).__name__}")
    text = str(int(value)) if not isinstance(value, str) else value
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (num_buckets - 1)


def is_categorical(t: pa.DataType) -> bool:
    """Column types that hold ids: integers or strings (dictionary-encoded ones too)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def hash_buckets(column: pa.Array | pa.ChunkedArray, num_buckets: int) -> np.ndarray:
    """Bucket ids (int64) of a column of integers or strings, each distinct value hashed once."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    encoded = arr.dictionary_encode()
    table = np.array([hash_bucket(v, num_buckets) for v in encoded.dictionary.to_pylist()]
                     + [OOV_BUCKET], np.int64)
    idx = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
    return table[idx.astype(np.int64)]


def encode_table(table: pa.Table, categorical: Sequence[str], numeric: Sequence[str],
                 num_buckets: int | Sequence[int], source: str = "table") -> np.ndarray:
    """The float32 matrix ``(N, len(categorical) + len(numeric))`` of a table: bucket ids, then
    numbers; ``num_buckets``: one for every categorical column, or one each. Raises
    :class:`DataError` naming the column for a type that is neither, or for null or
    non-finite numbers (the driver's check reports these before anything starts)."""
    cols = []
    buckets = [num_buckets] * len(categorical) if isinstance(num_buckets, int) else \
        list(num_buckets)
    for name, n_buckets in zip(categorical, buckets):
        col = table.column(name)
        if not is_categorical(col.type):
            raise DataError(f"{source}: categorical column {name!r} has type {col.type}; "
                            "expected integers or strings")
        cols.append(hash_buckets(col, n_buckets).astype(np.float32))
    for name in numeric:
        col = table.column(name)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise DataError(f"{source}: numeric column {name!r} has type {col.type}; expected "
                            "numbers")
        if col.null_count:
            raise DataError(f"{source}: numeric column {name!r} has {col.null_count} null(s); "
                            "fill or drop them")
        v = col.to_numpy().astype(np.float32)
        if not np.isfinite(v).all():
            raise DataError(f"{source}: numeric column {name!r} holds NaN or infinite values")
        cols.append(v)
    return np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0), np.float32)


def read_parquet_tabular(paths: Sequence[Path], categorical: Sequence[str],
                         numeric: Sequence[str], label_column: str,
                         num_buckets: int | Sequence[int],
                         num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels of tabular Parquet files (only the named columns are read)."""
    xs, ys = [], []
    for path in paths:
        table = read_table(path, (*categorical, *numeric, label_column))
        xs.append(encode_table(table, categorical, numeric, num_buckets, str(path)))
        ys.append(labels(table, label_column, num_classes, path))
    return np.concatenate(xs), np.concatenate(ys)
