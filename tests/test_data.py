from __future__ import annotations

import functools
import math
import gzip
import hashlib
import http.server
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distopt.config import DataConfig, load_config
from distopt.data import (MNIST_FILES, DataError, fetch_mnist, generate_signals,
                          generate_tokens, load_mini, load_splits, pad_tokens, parse_idx,
                          read_idx, read_parquet_arrays,
                          read_parquet_tokens, shard)


def idx_bytes(a: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + \
        a.astype(np.uint8).tobytes()


# ---------------------------------------------------------------- IDX


def test_idx_round_trip_raw_and_gz(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x").write_bytes(idx_bytes(a))
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz", 3), a)


def test_idx_errors_name_the_file(tmp_path):
    a = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(DataError, match="f1: wrong IDX magic"):
        parse_idx(b"\x01\x02" + idx_bytes(a)[2:], "f1")
    with pytest.raises(DataError, match="f2: IDX has 3 dimensions; expected 1"):
        parse_idx(idx_bytes(a), "f2", expect_ndim=1)
    with pytest.raises(DataError, match=r"f3: IDX dimensions \(2, 2, 2\) need 24 bytes"):
        parse_idx(idx_bytes(a)[:-1], "f3")
    p = tmp_path / "trunc.gz"
    p.write_bytes(gzip.compress(idx_bytes(a))[:-8])
    with pytest.raises(DataError, match="trunc.gz: cannot be read as gzip.*truncated or corrupt"):
        read_idx(p)
    p = tmp_path / "ok.gz"
    p.write_bytes(gzip.compress(idx_bytes(a)))
    with pytest.raises(DataError, match="ok.gz: checksum mismatch"):
        read_idx(p, sha256="0" * 64)


# ---------------------------------------------------------------- download


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a temporary directory."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _fake_mnist(root: Path, corrupt: str | None = None) -> dict[str, str]:
    rng = np.random.default_rng(0)
    files = {}
    for stem in MNIST_FILES:
        a = rng.integers(0, 255, (5, 28, 28) if "images" in stem else (5,), dtype=np.uint8)
        payload = idx_bytes(a)
        files[stem] = hashlib.sha256(payload).hexdigest()
        if stem == corrupt:
            payload = payload[:-1] + b"\xff"
        (root / f"{stem}.gz").write_bytes(gzip.compress(payload))
    return files


def test_download_good_files_verified_and_cached(http_dir, tmp_path):
    root, url = http_dir
    files = _fake_mnist(root)
    cache = tmp_path / "cache"
    d = fetch_mnist(cache, [url], files)
    for stem, digest in files.items():
        assert hashlib.sha256((d / stem).read_bytes()).hexdigest() == digest
    for f in root.iterdir():  # cached: a second call needs no server
        f.unlink()
    assert fetch_mnist(cache, [url], files) == d


def test_download_corrupt_file_fails_checksum_and_names_it(http_dir, tmp_path):
    root, url = http_dir
    files = _fake_mnist(root, corrupt="train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"(?s)train-labels-idx1-ubyte: no mirror.*checksum mismatch"):
        fetch_mnist(tmp_path / "cache", [url], files)
    assert not (tmp_path / "cache" / "mnist" / "train-labels-idx1-ubyte").exists()


def test_download_missing_file_tries_next_mirror(http_dir, tmp_path):
    root, url = http_dir
    files = _fake_mnist(root)
    (root / "good").mkdir()
    for f in list(root.glob("*.gz")):
        f.rename(root / "good" / f.name)
    with pytest.raises(DataError, match=r"(?s)no mirror gave.*HTTP Error 404"):
        fetch_mnist(tmp_path / "c1", [url + "/empty"], files)
    d = fetch_mnist(tmp_path / "c2", [url + "/empty", url + "/good"], files)
    assert all((d / s).exists() for s in files)


def test_parallel_downloads_do_not_race(http_dir, tmp_path):
    root, url = http_dir
    files = _fake_mnist(root)
    with ThreadPoolExecutor(4) as ex:
        dirs = list(ex.map(lambda _: fetch_mnist(tmp_path / "cache", [url], files), range(4)))
    assert len(set(dirs)) == 1
    leftovers = [p.name for p in dirs[0].iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []


def test_full_mnist_from_local_directory(mnist_dir):
    s = load_splits(DataConfig(name="mnist", path=str(mnist_dir)))
    assert len(s.x_train) + len(s.x_val) == 60_000 and len(s.x_test) == 10_000
    assert s.x_train.shape[1:] == (1, 28, 28) and s.x_train.dtype == np.uint8


def test_full_mnist_download_from_local_mirror(mnist_dir, http_dir, tmp_path):
    """The real files, served over HTTP, pass the real checksums."""
    root, url = http_dir
    for f in mnist_dir.glob("*.gz"):
        (root / f.name).write_bytes(f.read_bytes())
    cfg = load_config(None, ["data.name=mnist", f"data.mirrors=[{url}]",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    s = load_splits(cfg.data)
    assert len(s.x_test) == 10_000


# ---------------------------------------------------------------- embedded subset


def test_embedded_subset_is_real_stratified_and_small():
    from distopt.data import mini_path

    x_tr, y_tr, x_te, y_te = load_mini()
    assert x_tr.shape == (12_000, 1, 28, 28) and x_te.shape == (2_000, 1, 28, 28)
    assert np.bincount(y_tr).tolist() == [1200] * 10 and np.bincount(y_te).tolist() == [200] * 10
    assert mini_path().stat().st_size <= 3 * 1024 * 1024
    assert 25 < x_tr.mean() < 40  # MNIST's mean pixel is about 33, not noise


def test_embedded_subset_matches_source(mnist_dir, tmp_path):
    """The build script reproduces the shipped file byte for byte from the IDX files."""
    from distopt._embedded import build
    from distopt.data import mini_path

    build(mnist_dir, tmp_path / "mini.parquet")
    assert (tmp_path / "mini.parquet").read_bytes() == mini_path().read_bytes()


def test_validation_split_is_deterministic_and_disjoint():
    a, b = load_splits(DataConfig()), load_splits(DataConfig())
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert len(a.x_val) == 1200 and len(a.x_train) == 10_800
    c = load_splits(DataConfig(split_seed=1))
    assert not np.array_equal(a.x_val, c.x_val)
    # No validation image is also a training image (rows compared as bytes).
    train_rows = {r.tobytes() for r in a.x_train.reshape(len(a.x_train), -1)}
    assert sum(r.tobytes() in train_rows for r in a.x_val.reshape(len(a.x_val), -1)) < 5


def test_shard_equal_disjoint_and_seeded():
    parts = [shard(103, r, 3, seed=1, epoch=2) for r in range(3)]
    assert {len(p) for p in parts} == {34}
    assert len(set(np.concatenate(parts))) == 102
    assert not np.array_equal(shard(103, 0, 3, 1, 2), shard(103, 0, 3, 1, 3))
    np.testing.assert_array_equal(shard(103, 0, 3, 1, 2), shard(103, 0, 3, 1, 2))
    assert sorted(np.concatenate([shard(10, r, 3, 0, 0, False) for r in range(3)])) == \
        list(range(10))


# ---------------------------------------------------------------- parquet


def _write(path: Path, features: pa.Array, labels: list[int], **cols: pa.Array) -> Path:
    pq.write_table(pa.table({"image": features, "label": pa.array(labels, pa.int64()), **cols}),
                   path)
    return path


def test_parquet_list_and_binary_columns(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (6, 16), dtype=np.uint8)
    p1 = _write(tmp_path / "a.parquet",
                pa.FixedSizeListArray.from_arrays(pa.array(imgs.ravel()), 16), [0, 1, 2, 0, 1, 2])
    p2 = _write(tmp_path / "b.parquet", pa.array([r.tobytes() for r in imgs]), [0, 1, 2, 0, 1, 2])
    for p in (p1, p2):
        x, y = read_parquet_arrays([p], "image", "label", (1, 4, 4), 3)
        assert x.shape == (6, 1, 4, 4)
        np.testing.assert_array_equal(x.reshape(6, 16), imgs)
    floats = pa.array([list(map(float, r)) for r in imgs])
    x, _ = read_parquet_arrays([_write(tmp_path / "c.parquet", floats, [0] * 6)], "image",
                               "label", (1, 4, 4), 3)
    assert x.dtype == np.float32


def test_parquet_errors_name_file_and_problem(tmp_path):
    good = pa.array([[1, 2, 3, 4]] * 2)
    p = _write(tmp_path / "cols.parquet", good, [0, 1])
    with pytest.raises(DataError, match=r"cols.parquet: missing column\(s\) \['pixels'\]"):
        read_parquet_arrays([p], "pixels", "label", (1, 2, 2), 2)
    p = _write(tmp_path / "len.parquet", pa.array([[1, 2, 3], [1, 2, 3]]), [0, 1])
    with pytest.raises(DataError, match="len.parquet: column 'image' rows are not all of length 4"):
        read_parquet_arrays([p], "image", "label", (1, 2, 2), 2)
    p = _write(tmp_path / "lab.parquet", good, [0, 7])
    with pytest.raises(DataError, match=r"lab.parquet: 1 label\(s\) outside \[0, 2\), e.g. 7"):
        read_parquet_arrays([p], "image", "label", (1, 2, 2), 2)
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet file"):
        read_parquet_arrays([p], "image", "label", (1, 2, 2), 2)


def test_parquet_dataset_through_config(tmp_path):
    x_tr, y_tr, x_te, y_te = load_mini()
    for name, x, y in (("train", x_tr[:500], y_tr[:500]), ("test", x_te[:100], y_te[:100])):
        _write(tmp_path / f"{name}.parquet", pa.array([r.tobytes() for r in x]), y.tolist())
    cfg = load_config(None, ["data.name=parquet", f"data.path={tmp_path / 'train.parquet'}",
                             f"data.test_path={tmp_path / 'test.parquet'}"])
    s = load_splits(cfg.data)
    assert len(s.x_train) + len(s.x_val) == 500 and len(s.x_test) == 100


# ---------------------------------------------------------------- token sequences


def test_pad_tokens_pads_the_front_and_keeps_the_last_ids():
    x = pad_tokens([np.array([5, 6, 7]), np.array([1, 2, 3, 4, 5, 6]), np.array([], int)], 4)
    np.testing.assert_array_equal(x, [[0, 5, 6, 7], [3, 4, 5, 6], [0, 0, 0, 0]])
    assert x.dtype == np.int32


def test_parquet_token_sequences_and_their_errors(tmp_path):
    seqs = pa.array([[3, 4], [1, 2, 3, 4, 5], [9]], pa.list_(pa.int32()))
    p = _write(tmp_path / "tok.parquet", seqs, [0, 1, 1])
    x, y = read_parquet_tokens([p], "image", "label", 3, 10, 2)
    np.testing.assert_array_equal(x, [[0, 3, 4], [3, 4, 5], [0, 0, 9]])
    np.testing.assert_array_equal(y, [0, 1, 1])
    with pytest.raises(DataError, match=r"tok.parquet: 1 token id\(s\) outside \[0, 8\) "
                                        r"\(data.vocab_size\), e.g. 9"):
        read_parquet_tokens([p], "image", "label", 3, 8, 2)
    p = _write(tmp_path / "neg.parquet", pa.array([[1, -2]]), [0])
    with pytest.raises(DataError, match=r"neg.parquet: 1 token id\(s\) outside .* e.g. -2"):
        read_parquet_tokens([p], "image", "label", 3, 8, 2)
    p = _write(tmp_path / "flt.parquet", pa.array([[1.5, 2.0]]), [0])
    with pytest.raises(DataError, match="flt.parquet: column 'image' has type list<.*double>; "
                                        "token sequences need a list of integers"):
        read_parquet_tokens([p], "image", "label", 3, 8, 2)
    p = _write(tmp_path / "lab.parquet", seqs, [0, 1, 5])
    with pytest.raises(DataError, match=r"lab.parquet: 1 label\(s\) outside \[0, 2\)"):
        read_parquet_tokens([p], "image", "label", 3, 10, 2)


def test_token_parquet_through_config(tmp_path):
    x, y = generate_tokens(300, 500, 20, 10, seed=1)
    rows = pa.array([list(r[r > 0]) for r in x], pa.list_(pa.int64()))
    p = _write(tmp_path / "train.parquet", rows, y.tolist())
    cfg = load_config(None, ["data.name=parquet", "data.kind=tokens", f"data.path={p}",
                             "data.max_len=20", "data.vocab_size=500", "model.family=rnn"])
    s = load_splits(cfg.data)
    assert s.tokens and s.x_train.shape[1] == 20 and len(s.x_train) + len(s.x_val) == 300


def test_generated_tokens_need_reading_and_are_deterministic():
    x, y = generate_tokens(2000, 5000, 64, 10, seed=0)
    x2, y2 = generate_tokens(2000, 5000, 64, 10, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert x.shape == (2000, 64) and x.min() >= 0 and x.max() < 5000
    # The label is the topic with the most ids (16 ids per topic, from id 1).
    topic = np.where((x >= 1) & (x < 161), (x - 1) // 16, -1)
    counts = np.stack([(topic == c).sum(1) for c in range(10)], 1)
    assert np.array_equal(counts.argmax(1), y)
    assert ((counts > 0).sum(1) == 2).all()  # a distractor topic is always present
    # Length carries no information: mean length is the same for every class (+-2 ids).
    lengths = (x > 0).sum(1)
    means = [lengths[y == c].mean() for c in range(10)]
    assert max(means) - min(means) < 2.5
    assert np.bincount(y).min() > 150


# ---------------------------------------------------------------- bounded reading


def test_parquet_reads_only_the_needed_columns(tmp_path):
    """10 valid rows beside a 160 MB unused column that compresses to almost nothing: a fresh
    process reading the data grows by far less than that column (before: every column was
    loaded before any check)."""
    imgs = pa.array([bytes(16)] * 10)
    blob = b"\0" * (16 << 20)
    table = pa.table({"image": imgs, "label": pa.array([0, 1] * 5, pa.int64()),
                      "unused": pa.array([blob] * 10, pa.large_binary())})
    p = tmp_path / "wide.parquet"
    pq.write_table(table, p, compression="zstd")
    del table, blob
    assert p.stat().st_size < 200_000
    code = ("import resource, sys; from pathlib import Path\n"
            "from distopt.data import read_parquet_arrays\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "x, y = read_parquet_arrays([Path(sys.argv[1])], 'image', 'label', (1, 4, 4), 2)\n"
            "print(x.shape, 'GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(10, 1, 4, 4)" in out.stdout
    assert int(out.stdout.split("GROWTH_KB")[1]) < 40 * 1024, out.stdout


def test_empty_parquet_is_an_error_naming_the_file(tmp_path):
    p = _write(tmp_path / "empty.parquet", pa.array([], pa.list_(pa.uint8())), [])
    with pytest.raises(DataError, match="empty.parquet: has no rows"):
        read_parquet_arrays([p], "image", "label", (1, 2, 2), 2)


def test_idx_dimensions_that_overflow_64_bits_are_an_error():
    # 2^31 * 2^31 * 4 = 2^64: numpy's product wraps to 0 and a header-only file "matched".
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 2**31, 4)
    with pytest.raises(DataError, match=r"IDX dimensions \(2147483648, 2147483648, 4\) need"):
        parse_idx(header, "huge")


def test_gz_decompression_stops_at_the_expected_size(tmp_path):
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros(10 << 20, np.uint8))))  # 10 MB of labels
    assert p.stat().st_size < 100_000
    with pytest.raises(DataError, match="decompresses to more than 60,008 bytes"):
        read_idx(p, 1, max_bytes=60_008)
    assert read_idx(p, 1).shape == (10 << 20,)  # the default bound is far larger


# ---------------------------------------------------------------- robust downloads


class _Truncating(http.server.BaseHTTPRequestHandler):
    """Promises a 100,000-byte body, sends 10 bytes, closes the connection."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(8))
        self.wfile.flush()
        self.connection.close()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def truncating_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_transport_errors_move_on_to_the_next_mirror(http_dir, truncating_url, tmp_path,
                                                     caplog):
    root, url = http_dir
    files = _fake_mnist(root)
    # Directly on the module's logger: the CLI's setup stops "distopt" records propagating.
    logger = logging.getLogger("distopt.data.mnist")
    logger.addHandler(caplog.handler)
    try:
        d = fetch_mnist(tmp_path / "cache", [truncating_url, "no-scheme.example/mnist", url],
                        files)
    finally:
        logger.removeHandler(caplog.handler)
    assert all(hashlib.sha256((d / s).read_bytes()).hexdigest() == h for s, h in files.items())
    logged = caplog.text
    assert "IncompleteRead" in logged and "unknown url type" in logged
    assert [p.name for p in d.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []


def test_all_mirrors_failing_names_each_reason_and_leaves_nothing(truncating_url, tmp_path):
    files = {"train-labels-idx1-ubyte": "0" * 64}
    with pytest.raises(DataError, match=r"(?s)no mirror gave.*IncompleteRead.*unknown url type"):
        fetch_mnist(tmp_path / "cache", [truncating_url, "nowhere"], files)
    assert [p.name for p in (tmp_path / "cache" / "mnist").iterdir()] == [".lock"]


def test_a_held_lock_times_out_with_a_clear_message(http_dir, tmp_path):
    from filelock import FileLock

    root, url = http_dir
    files = _fake_mnist(root)
    (tmp_path / "cache" / "mnist").mkdir(parents=True)
    lock = tmp_path / "cache" / "mnist" / ".lock"
    with FileLock(str(lock), thread_local=False):
        with ThreadPoolExecutor(1) as ex:  # another thread: the lock is per-thread re-entrant
            fut = ex.submit(fetch_mnist, tmp_path / "cache", [url], files, 5.0, 0.5)
            with pytest.raises(DataError, match="has held this download lock for 0.5 s; if no "
                                                "distopt download is running, delete"):
                fut.result()


@pytest.mark.skipif(os.getuid() != 0, reason="acting as a second user needs root")
def test_a_second_user_reads_a_shared_cache(http_dir, tmp_path):
    """User A (root here) downloads into a shared cache; user B (uid 65534, in a forked child
    that drops its privileges) uses the verified files without write access to anything."""
    root, url = http_dir
    files = _fake_mnist(root)
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        shared.chmod(0o755)
        d = fetch_mnist(shared, [url], files)
        for s in files:
            assert stat.S_IMODE((d / s).stat().st_mode) == 0o644
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become another user, then read the cache
            try:
                os.setgid(65534)
                os.setuid(65534)
                out = fetch_mnist(shared, ["http://127.0.0.1:9/unreachable"], files)
                msg = f"OK {out}"
            except BaseException as e:  # report anything, the parent asserts
                msg = f"FAIL {e.__class__.__name__}: {e}"
            os.write(w, msg.encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        msg = os.read(r, 4096).decode()
        assert msg == f"OK {d}", msg
    finally:
        shutil.rmtree(shared)


# ---------------------------------------------------------------- the driver's data check


def _parquet_cfg(train: Path, test: Path | None = None, *more: str):
    return load_config(None, ["data.name=parquet", f"data.path={train}", "data.shape=[1, 2, 2]",
                              "data.num_classes=3", "data.val_fraction=0.2", "model.family=mlp",
                              *([f"data.test_path={test}"] if test else []), *more]).data


def _rows(n: int, classes: int = 3) -> tuple[pa.Array, list[int]]:
    return pa.array([[float(i % 7)] * 4 for i in range(n)]), [i % classes for i in range(n)]


def test_driver_check_lists_every_problem_with_file_row_and_value(tmp_path):
    from distopt.data import check_parquet_data

    feats, labels = _rows(30)
    good = _write(tmp_path / "good.parquet", feats, labels)
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"image": feats, "label": pa.array([str(v) for v in labels])}),
                   strings)
    floats = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"image": feats, "label": pa.array([v + 0.5 for v in labels])}),
                   floats)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"image": feats, "label": pa.array([None] + labels[1:],
                                                                pa.int64())}), nulls)
    neg = _write(tmp_path / "neg.parquet", feats, [-1] + labels[1:])
    nan = _write(tmp_path / "nan.parquet", pa.array([[0.0, math.nan, 1.0, math.inf]] +
                                                    [[1.0] * 4] * 29), labels)
    short = _write(tmp_path / "short.parquet", pa.array([[1.0] * 3] + [[1.0] * 4] * 29), labels)
    problems, _ = check_parquet_data(_parquet_cfg(tmp_path / "*.parquet"))
    text = "\n".join(problems)
    assert "good.parquet" not in text
    assert "strings.parquet: column 'label' has type string; labels must be integers in [0, 3)" \
        " (data.num_classes), e.g. row 0: '0'" in text
    assert "floats.parquet: column 'label' has type double" in text and "row 0: 0.5" in text
    assert "nulls.parquet: column 'label' has 1 null label(s), e.g. row 0: None" in text
    assert "neg.parquet: column 'label' has 1 label(s) outside [0, 3) (data.num_classes), " \
        "e.g. row 0: -1" in text
    assert "nan.parquet: column 'image' holds 2 NaN or infinite value(s) in 1 row(s), " \
        "e.g. row 0" in text
    assert "short.parquet: column 'image' has 1 row(s) whose length is not 4" in text
    assert len(problems) == 6, problems
    del good, neg, nan, short


def test_driver_check_needs_rows_per_class_and_two_classes(tmp_path):
    from distopt.data import check_parquet_data

    feats, labels = _rows(5)
    tiny = _write(tmp_path / "tiny.parquet", feats, labels)
    problems, _ = check_parquet_data(_parquet_cfg(tiny))
    assert "5 training row(s) give a validation split of 1" in problems[0]
    feats, _ = _rows(40)
    one = _write(tmp_path / "one.parquet", feats, [2] * 40)
    problems, _ = check_parquet_data(_parquet_cfg(one))
    assert "hold 40 row(s) of 1 class(es) ([2]); a classifier needs at least 2" in problems[0]
    two = _write(tmp_path / "two.parquet", feats, [0, 1] * 20)
    problems, warnings = check_parquet_data(_parquet_cfg(two))
    assert problems == [] and "class(es) [2] of data.num_classes 3 never occur" in warnings[0]
    empty = _write(tmp_path / "empty.parquet", pa.array([], pa.list_(pa.float64())), [])
    problems, _ = check_parquet_data(_parquet_cfg(two, empty))
    assert problems == [f"{empty}: has no rows"]


def test_bad_parquet_data_exits_2_in_seconds_before_ray_starts(tmp_path):
    feats, labels = _rows(30)
    pq.write_table(pa.table({"image": feats, "label": pa.array([str(v) for v in labels])}),
                   tmp_path / "train.parquet")
    code = ("import sys, time; t = time.perf_counter(); from distopt.cli import main; "
            "rc = main(sys.argv[1:]); "
            "print('RAY' if 'ray' in sys.modules else 'NO_RAY', time.perf_counter() - t); "
            "sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "train", "--output", str(tmp_path / "out"),
                        "data.name=parquet", f"data.path={tmp_path / 'train.parquet'}",
                        "data.shape=[1, 2, 2]", "data.num_classes=3", "model.family=mlp"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "data has 1 problem(s)" in p.stderr and "has type string" in p.stderr
    assert p.stdout.split()[0] == "NO_RAY"


def test_generated_signals_are_deterministic_balanced_and_need_the_waveform():
    x, y = generate_signals(3000, seed=0)
    x2, y2 = generate_signals(3000, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert x.shape == (3000, 3, 1, 128) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y, minlength=6).min() > 400
    # The level carries little: a nearest-centroid rule on per-channel means (what a model
    # that ignores the waveform could use) stays far below what convolutions reach (~95%).
    feats = x[:, :, 0].mean(2)
    centroids = np.stack([feats[y == c].mean(0) for c in range(6)])
    guess = np.linalg.norm(feats[:, None] - centroids[None], axis=2).argmin(1)
    assert (guess == y).mean() < 0.5
    s = load_splits(load_config(None, ["data.name=signals-mini", "data.shape=[3,1,128]",
                                       "data.num_classes=6", "model.family=conv1d"]).data)
    assert s.x_train.shape[1:] == (3, 1, 128) and s.scale == 1.0 and not s.tokens
    assert len(s.x_train) + len(s.x_val) == 6000 and len(s.x_test) == 2000


def test_columns_that_would_not_fit_in_memory_are_refused_from_the_metadata(tmp_path,
                                                                           monkeypatch):
    """The "fits in memory" check reads the file's metadata only: here the machine claims
    4 KB, so a file of 100 rows of 784 bytes is refused before a byte of it is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import distopt.data.parquet as D
    from distopt.data import DataError

    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"image": [bytes(784)] * 100, "label": [1] * 100}), path)
    monkeypatch.setattr(D, "_memory_bytes", lambda: 4096)
    read = []
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, *a, **k: read.append(1))
    with pytest.raises(DataError, match="more than half of this machine's memory"):
        D.read_table(path, ["image", "label"])
    assert not read
