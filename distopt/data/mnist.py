"""Full MNIST: the four IDX files from a local directory, or downloaded from mirrors into a
cache with their SHA-256 checked, decompression bounded, and one download at a time per cache
(a file lock)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from filelock import FileLock, Timeout

from distopt.config import DataConfig
from distopt.data.splits import DataError

log = logging.getLogger(__name__)

__all__ = ["MNIST_FILES", "fetch_mnist", "load_mnist_arrays", "parse_idx", "read_idx"]

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


