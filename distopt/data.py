"""Datasets as numpy arrays: the embedded MNIST subset, full MNIST (local or downloaded with
checksums) and bring-your-own Parquet.

Every worker loads its data itself (no Ray Data: its read tasks need free CPUs and deadlock when
trial workers hold every CPU of a small machine) and takes a strided shard by rank.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import http.client
import json
import logging
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from distopt.config import SIGNALS_CLASSES, SIGNALS_SHAPE, DataConfig

log = logging.getLogger(__name__)

__all__ = ["DataError", "Splits", "check_parquet_data", "load_splits", "read_idx", "fetch_mnist",
           "MNIST_FILES"]


class DataError(RuntimeError):
    """Data could not be read or failed a check; the message names the file and the problem."""


# SHA-256 of the decompressed IDX payloads (the .gz wrappers differ between mirrors).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Exact sizes of those payloads: decompression stops there, so a bad .gz cannot expand further.
MNIST_SIZES: dict[str, int] = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
MAX_IDX_BYTES = 1 << 30  # for IDX files of unknown size
LOCK_TIMEOUT_S = 600.0  # one download of MNIST takes seconds; a lock held this long is stale
CACHE_FILE_MODE = 0o644  # a shared data.cache_dir: other users read what one downloaded

MINI_FILE = "mnist_mini.parquet"


@dataclass(frozen=True)
class Splits:
    """Train/validation/test arrays. Images are ``(N, C, H, W)``, uint8 (scale 1/255) or
    float32 (scale 1); token sequences are ``(N, max_len)`` int32 ids (0 = padding); labels
    int64. ``digest`` identifies the data for manifests."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str

    @property
    def scale(self) -> float:
        return 1.0 / 255.0 if self.x_train.dtype == np.uint8 else 1.0

    @property
    def tokens(self) -> bool:
        return self.x_train.dtype == np.int32


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

_IDX_DTYPE = {0x08: np.uint8}


def _gunzip(raw: bytes, max_bytes: int, name: str) -> bytes:
    """Decompress gzip bytes, stopping past ``max_bytes`` (a bomb is refused, not expanded)."""
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(raw, max_bytes + 1)
    if len(out) > max_bytes:
        raise DataError(f"{name}: decompresses to more than {max_bytes:,} bytes, the most this "
                        "file can hold; it is not the expected file")
    if not d.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")
    return out


def _read_payload(path: Path, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    try:
        if path.suffix == ".gz":
            return _gunzip(path.read_bytes(), max_bytes, str(path))
        if path.stat().st_size > max_bytes:
            raise DataError(f"{path}: {path.stat().st_size:,} bytes, more than the {max_bytes:,} "
                            "this file can hold")
        return path.read_bytes()
    except (EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'}"
                        f" ({e.__class__.__name__}: {e}); the file is truncated or corrupt")


def parse_idx(payload: bytes, name: str, expect_ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes (magic 0x0000 TT NN, then NN big-endian uint32 dims, then data)."""
    if len(payload) < 4 or payload[:2] != b"\x00\x00":
        raise DataError(f"{name}: wrong IDX magic {payload[:4].hex()!r}; expected 0000TTNN")
    dtype_code, ndim = payload[2], payload[3]
    if dtype_code not in _IDX_DTYPE:
        raise DataError(f"{name}: IDX data type 0x{dtype_code:02x} is not supported (uint8 only)")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{name}: IDX has {ndim} dimensions; expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{name}: IDX header is truncated")
    dims = struct.unpack(f">{ndim}I", payload[4:header])
    n = math.prod(dims)  # Python integers: no overflow, whatever the header claims
    if len(payload) != header + n:
        raise DataError(f"{name}: IDX dimensions {dims} need {header + n} bytes, file has "
                        f"{len(payload)}")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | Path, expect_ndim: int | None = None,
             sha256: str | None = None, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read a raw or gzipped IDX file of at most ``max_bytes`` (decompressed); verify the
    payload's SHA-256 if given."""
    path = Path(path)
    payload = _read_payload(path, max_bytes)
    if sha256 is not None:
        got = hashlib.sha256(payload).hexdigest()
        if got != sha256:
            raise DataError(f"{path}: checksum mismatch: SHA-256 of the decompressed content is "
                            f"{got}, expected {sha256}; the file is corrupt or not MNIST")
    return parse_idx(payload, str(path), expect_ndim)


def _find_local(directory: Path, stem: str) -> Path | None:
    for cand in (directory / stem, directory / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def _verified(path: Path, digest: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def _download(url: str, max_bytes: int, timeout_s: float) -> bytes:
    """The decompressed payload of one ``.gz`` URL; transport and format errors raise."""
    cap = max_bytes + (1 << 20)  # gzip never grows data by more than a little
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        raw = r.read(cap + 1)
        promised = r.headers.get("Content-Length")
    if len(raw) > cap:
        raise DataError(f"{url}: body is larger than {cap:,} bytes")
    if promised is not None and promised.isdigit() and len(raw) < int(promised):
        # read(n) returns a short body quietly when the server closes early
        raise http.client.IncompleteRead(raw, int(promised) - len(raw))
    return _gunzip(raw, max_bytes, url)


def _store(payload: bytes, target: Path, final: Path) -> None:
    """Write ``payload`` under a temporary name and rename it into place: a crash never leaves
    a half file under the final name, and a failure leaves no temporary behind."""
    fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{final.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, CACHE_FILE_MODE)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_mnist(cache_dir: str | Path, mirrors: Sequence[str],
                files: Mapping[str, str] = MNIST_FILES, timeout_s: float = 60.0,
                lock_timeout_s: float = LOCK_TIMEOUT_S) -> Path:
    """Download the MNIST files into ``cache_dir`` once, verified, and return the directory.

    Verified files already there are used without taking the lock (so users who share a
    read-only cache need no write access). Otherwise a file lock serializes parallel workers:
    the first downloads, the rest find verified files. Each file is tried on every mirror in
    order; any transport error (refused, reset, truncated body, bad URL) or checksum mismatch
    moves on to the next mirror, with the reason logged."""
    target = Path(cache_dir).expanduser() / "mnist"
    if all(_verified(target / stem, digest) for stem, digest in files.items()):
        return target
    lock_path = target / ".lock"
    try:
        target.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=lock_timeout_s, mode=0o666)
        with lock:
            for stem, digest in files.items():
                _fetch_one(stem, digest, target, mirrors, timeout_s)
    except Timeout:
        raise DataError(f"{lock_path}: another process has held this download lock for "
                        f"{lock_timeout_s:g} s; if no distopt download is running, delete "
                        "the file and retry") from None
    except PermissionError as e:
        raise DataError(f"{target}: cannot write the download cache ({e.strerror}: "
                        f"{e.filename}); set data.cache_dir to a directory you can write, or "
                        "ask its owner to download once (the files are then read-only for "
                        "you)") from None
    return target


def _fetch_one(stem: str, digest: str, target: Path, mirrors: Sequence[str],
               timeout_s: float) -> None:
    final = target / stem
    if _verified(final, digest):
        return
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + f"/{stem}.gz"
        try:
            payload = _download(url, MNIST_SIZES.get(stem, MAX_IDX_BYTES), timeout_s)
        except (urllib.error.URLError, http.client.HTTPException, OSError, EOFError,
                zlib.error, ValueError, DataError) as e:
            # URLError: refused, DNS, HTTP status; HTTPException: truncated body
            # (IncompleteRead), bad status line; ValueError: a URL without a scheme.
            reason = f"{url}: {e.__class__.__name__}: {e}"
            log.warning("download failed, trying the next mirror: %s", reason)
            errors.append(reason)
            continue
        got = hashlib.sha256(payload).hexdigest()
        if got != digest:
            reason = f"{url}: checksum mismatch (SHA-256 {got}, expected {digest})"
            log.warning("download failed, trying the next mirror: %s", reason)
            errors.append(reason)
            continue
        _store(payload, target, final)
        log.info("downloaded %s from %s", stem, url)
        return
    raise DataError(f"{stem}: no mirror gave a verified copy:\n  " + "\n  ".join(errors))


def load_mnist_arrays(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full MNIST from ``cfg.path`` if set, else downloaded into ``cfg.cache_dir``."""
    if cfg.path:
        directory = Path(cfg.path).expanduser()
        missing = [s for s in MNIST_FILES if _find_local(directory, s) is None]
        if missing:
            raise DataError(f"{directory}: missing MNIST file(s) {', '.join(missing)} "
                            "(raw or .gz)")
        paths = {s: _find_local(directory, s) for s in MNIST_FILES}
    else:
        directory = fetch_mnist(cfg.cache_dir, cfg.mirrors)
        paths = {s: directory / s for s in MNIST_FILES}
    arrays = {s: read_idx(p, 3 if "images" in s else 1, MNIST_FILES[s],  # type: ignore[arg-type]
                          MNIST_SIZES[s]) for s, p in paths.items()}
    return (arrays["train-images-idx3-ubyte"][:, None], arrays["train-labels-idx1-ubyte"],
            arrays["t10k-images-idx3-ubyte"][:, None], arrays["t10k-labels-idx1-ubyte"])


# --------------------------------------------------------------------------------------------
# Parquet (embedded subset and bring-your-own)
# --------------------------------------------------------------------------------------------


def _expand(pattern: str) -> list[Path]:
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


def _read_table(path: Path, columns: Sequence[str]) -> pa.Table:
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


def _labels(table: pa.Table, label_column: str, num_classes: int, path: Path) -> np.ndarray:
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


def _is_bytes(t: pa.DataType) -> bool:
    """Encoded raw uint8 images: one byte string per row."""
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
        pa.types.is_fixed_size_binary(t)


def _is_list(t: pa.DataType) -> bool:
    """A list of numbers (or token ids) per row."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def read_parquet_arrays(paths: Sequence[Path], feature_column: str, label_column: str,
                        shape: Sequence[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read features ``(N, *shape)`` and labels from Parquet, checking every file."""
    xs, ys = [], []
    n_feat = int(np.prod(shape))
    for path in paths:
        table = _read_table(path, (feature_column, label_column))
        col = table.column(feature_column).combine_chunks()
        if _is_bytes(col.type):
            lengths = {len(v) for v in col.to_pylist()}
            if lengths != {n_feat}:
                raise DataError(f"{path}: column {feature_column!r} holds byte strings of "
                                f"length(s) {sorted(lengths)[:5]}; shape {list(shape)} needs "
                                f"{n_feat}")
            x = np.frombuffer(b"".join(col.to_pylist()), dtype=np.uint8).reshape(-1, *shape)
        elif _is_list(col.type):
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
        ys.append(_labels(table, label_column, num_classes, path))
    dtypes = {x.dtype for x in xs}
    x_all = np.concatenate([x.astype(np.float32) for x in xs]) if len(dtypes) > 1 else \
        np.concatenate(xs)
    return x_all, np.concatenate(ys)


# --------------------------------------------------------------------------------------------
# The driver's check of a user's Parquet data, before Ray starts
# --------------------------------------------------------------------------------------------


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
    if _is_bytes(col.type):
        lengths = np.array([len(v) if v is not None else n_feat for v in col.to_pylist()])
        wrong = lengths != n_feat
    elif _is_list(col.type):
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


def check_parquet_data(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """Every problem with a user's Parquet training and test files, found on the driver before
    anything starts (reading only the two columns): schema, label type, range and nulls,
    feature lengths, nulls and non-finite values, enough rows for a validation split with one
    row per class, and at least two classes in training. Returns ``(problems, warnings)``;
    warnings name classes missing from the training files."""
    if cfg.name != "parquet" or not cfg.path:
        return [], []
    problems: list[str] = []
    labels: list[np.ndarray] = []
    groups = [("training", cfg.path)] + ([("test", cfg.test_path)] if cfg.test_path else [])
    for role, pattern in groups:
        try:
            files = _expand(pattern)
        except DataError as e:
            problems.append(str(e))
            continue
        for path in files:
            try:
                table = _read_table(path, (cfg.feature_column, cfg.label_column))
            except DataError as e:
                problems.append(str(e))
                continue
            label_problems, y = _check_labels(table, cfg, path)
            problems += label_problems + _check_features(table, cfg, path)
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
        table = _read_table(path, (feature_column, label_column))
        col = table.column(feature_column).combine_chunks()
        if not _is_list(col.type) or \
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
        ys.append(_labels(table, label_column, num_classes, path))
    return np.concatenate(xs), np.concatenate(ys)


# Sizes of the generated token dataset (tokens-mini).
TOKENS_MINI_TRAIN, TOKENS_MINI_TEST = 10_000, 2_000


def generate_tokens(n: int, vocab_size: int, max_len: int, num_classes: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic text-classification set that can only be learned by reading the tokens.

    Ids ``1 .. num_classes * T`` are split into ``num_classes`` topics of ``T`` ids each
    (``T = 16``, fewer if the vocabulary is small); all other ids are topic-free filler. Every sequence
    has a random length in ``[max_len / 2, max_len]`` of filler, into which ``k`` ids of its
    label's topic (k uniform in 3..6) and ``j < k`` ids of one other topic are placed at random
    positions. The label is the topic with the most ids: length, position and filler carry no
    information, and a distractor topic is always present, so a model has to recognise the
    topic ids and count them."""
    rng = np.random.default_rng(seed)
    per_topic = max(1, min(16, (vocab_size - 1) // (2 * num_classes)))
    first_filler = 1 + num_classes * per_topic
    if first_filler >= vocab_size or max_len < 12:
        raise DataError(f"tokens-mini: vocab_size {vocab_size} and max_len {max_len} are too "
                        f"small for {num_classes} topics (need vocab_size > "
                        f"{first_filler} and max_len >= 12)")
    y = rng.integers(0, num_classes, n)
    other = (y + rng.integers(1, num_classes, n)) % num_classes
    seqs = []
    for label, distractor in zip(y, other):
        k = int(rng.integers(3, 7))
        j = int(rng.integers(1, k))
        length = int(rng.integers(max(max_len // 2, k + j), max_len + 1))
        s = rng.integers(first_filler, vocab_size, length)
        pos = rng.choice(length, k + j, replace=False)
        s[pos[:k]] = 1 + label * per_topic + rng.integers(0, per_topic, k)
        s[pos[k:]] = 1 + distractor * per_topic + rng.integers(0, per_topic, j)
        seqs.append(s)
    return pad_tokens(seqs, max_len), y.astype(np.int64)


# Sizes of the generated 1-D signal dataset (signals-mini).
SIGNALS_MINI_TRAIN, SIGNALS_MINI_TEST = 6_000, 2_000


def generate_signals(n: int, seed: int, length: int = SIGNALS_SHAPE[2]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic sensor set: ``n`` float32 signals ``(3, 1, length)`` in 6 classes, where
    the class is in the *shape* of a waveform, not in its level or position.

    Every signal is Gaussian noise (sigma 0.6) plus a random offset per channel, plus a
    low-amplitude distractor sine on every channel (random frequency and phase), plus the
    class's waveform on one channel, with random amplitude (0.6-1.4), phase and onset:
    0 slow sine (1-2.5 cycles) and 1 fast sine (5-8 cycles) on channel 0; 2 square wave and
    3 rising chirp on channel 1; 4 two to four short Gaussian bursts and 5 sawtooth on
    channel 2. Pairs on one channel differ in frequency or waveform only, so a model must
    read local temporal structure; the noise keeps a perfect score out of reach."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64) / length
    y = rng.integers(0, SIGNALS_CLASSES, n)
    x = rng.normal(0.0, 0.6, (n, 3, length)) + rng.normal(0.0, 0.5, (n, 3, 1))
    freq = rng.uniform(0.5, 10.0, (n, 3, 1))
    x += 0.3 * np.sin(2 * np.pi * (freq * t + rng.uniform(0, 1, (n, 3, 1))))
    amp = rng.uniform(0.6, 1.4, n)
    phase = rng.uniform(0, 1, n)
    for i, label in enumerate(y):
        if label in (0, 1):
            f = rng.uniform(1.0, 2.5) if label == 0 else rng.uniform(5.0, 8.0)
            wave = np.sin(2 * np.pi * (f * t + phase[i]))
        elif label == 2:
            wave = np.sign(np.sin(2 * np.pi * (rng.uniform(2.0, 4.0) * t + phase[i])))
        elif label == 3:
            f0 = rng.uniform(1.0, 3.0)
            wave = np.sin(2 * np.pi * (f0 * t + rng.uniform(4.0, 7.0) * t ** 2 + phase[i]))
        elif label == 4:
            wave = np.zeros(length)
            for c in rng.uniform(0.05, 0.95, int(rng.integers(2, 5))):
                wave += 2.0 * np.exp(-0.5 * ((t - c) / 0.015) ** 2)
        else:
            wave = 2.0 * ((rng.uniform(2.0, 4.0) * t + phase[i]) % 1.0) - 1.0
        x[i, label // 2] += amp[i] * wave
    return x.astype(np.float32).reshape(n, 3, 1, length), y.astype(np.int64)


def mini_path() -> Path:
    return Path(str(resources.files("distopt") / "_data" / MINI_FILE))


def load_mini() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The embedded class-stratified MNIST subset, verified against its recorded digest."""
    path = mini_path()
    meta = json.loads((path.parent / "mnist_mini.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != meta["sha256"]:
        raise DataError(f"{path}: checksum mismatch (SHA-256 {digest}, expected "
                        f"{meta['sha256']}); reinstall distopt")
    table = pq.read_table(path)
    split = table.column("split").to_numpy(zero_copy_only=False)
    x = table.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 28, 28)
    y = table.column("label").to_numpy().astype(np.int64)
    tr, te = split == "train", split == "test"
    return x[tr], y[tr], x[te], y[te]


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
        x_tr, y_tr = read_parquet_tokens(_expand(cfg.path), *args)
        if cfg.test_path:
            x_te, y_te = read_parquet_tokens(_expand(cfg.test_path), *args)
        else:
            x_te, y_te = x_tr[:0], y_tr[:0]
    else:
        assert cfg.path is not None
        x_tr, y_tr = read_parquet_arrays(_expand(cfg.path), cfg.feature_column,
                                         cfg.label_column, cfg.shape, cfg.num_classes)
        if cfg.test_path:
            x_te, y_te = read_parquet_arrays(_expand(cfg.test_path), cfg.feature_column,
                                             cfg.label_column, cfg.shape, cfg.num_classes)
        else:
            x_te, y_te = x_tr[:0], y_tr[:0]
    perm = np.random.default_rng(cfg.split_seed).permutation(len(x_tr))
    n_val = max(1, int(round(cfg.val_fraction * len(x_tr))))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Splits(x_tr[train], y_tr[train], x_tr[val], y_tr[val], x_te, y_te,
                  _digest(x_tr, y_tr, x_te, y_te))


def shard(n: int, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool = True
          ) -> np.ndarray:
    """Indices of this rank's part of an epoch: a seeded permutation, strided by rank.

    Every rank gets the same count (the tail is dropped when shuffling) so that DDP ranks take
    the same number of steps and no collective waits forever."""
    if not shuffle:
        return np.arange(rank, n, world_size)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world_size
    return perm[rank::world_size][:per_rank]
