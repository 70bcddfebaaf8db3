"""Experiments on shared storage: a real S3 endpoint (moto's server, on 127.0.0.1, started here;
no cloud account), reached through pyarrow's S3 filesystem as on a real cluster."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from distopt.storage import Location
from distopt.training.dense_store import dense_key
from distopt.workdir import MARKER, check_location, create_location, replace_location

from conftest import CONFIGS, ROOT, subprocess_env

BUCKET = "distopt-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port, a bucket, and the environment that points
    boto3, pyarrow (and so Ray) at it."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        deadline = time.time() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                           Prefix=prefix)
    # pyarrow marks directories with empty "dir/" objects: not files
    return sorted(o["Key"] for page in pages for o in page.get("Contents", [])
                  if not o["Key"].endswith("/"))


def test_location_reads_writes_and_lists_on_s3(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    loc = Location(f"s3://{BUCKET}/unit")
    assert loc.remote and not loc.exists() and not loc.nonempty()
    loc.write_bytes("a/b.txt", b"hello")
    assert loc.nonempty() and loc.is_file("a/b.txt") and not loc.is_file("a")
    assert loc.read_bytes(f"{BUCKET}/unit/a/b.txt") == b"hello"
    (tmp_path / "up" / "models").mkdir(parents=True)
    (tmp_path / "up" / "models" / "m.dopt").write_bytes(b"\x01\x02")
    (tmp_path / "up" / "study.db").write_bytes(b"db")
    assert loc.upload(tmp_path / "up", skip=("study.db",)) == 1
    assert _keys("unit/") == ["unit/a/b.txt", "unit/models/m.dopt"]
    got = loc.download(["models", "missing.txt", "a/b.txt"], tmp_path / "down")
    assert sorted(got) == ["a/b.txt", "models/m.dopt"]
    assert (tmp_path / "down" / "models" / "m.dopt").read_bytes() == b"\x01\x02"
    assert loc.local == Location(f"s3://{BUCKET}/unit/").local  # one staging dir per URI
    assert str(tmp_path / "home") in str(loc.local)


def test_dense_store_on_s3_writes_whole_entries_and_reads_them_back(s3_env):
    import torch

    from distopt.config import load_config
    from distopt.training.dense_store import DenseStore, DenseWeights

    cfg = load_config(None)
    weights = DenseWeights(spec={"family": "mlp"}, state={"w": torch.ones(3)}, dense_epochs=1,
                           precision="fp32", history=[{"epoch": 0, "val_accuracy": 0.5}])
    store = DenseStore(f"s3://{BUCKET}/dense-unit", "t1")
    assert store.load(cfg) is None
    store.save(cfg, weights)
    assert _keys("dense-unit/") == [f"dense-unit/{dense_key(cfg)}.pt"]  # moved, no temporary
    got = DenseStore(f"s3://{BUCKET}/dense-unit", "t2").load(cfg)
    assert got is not None and torch.equal(got.state["w"], weights.state["w"])
    assert got.history == weights.history


def test_remote_overwrite_needs_the_marker(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    foreign = Location(f"s3://{BUCKET}/foreign")
    foreign.write_bytes("data.csv", b"1,2")
    problems = check_location(foreign, resume=False, overwrite=True)
    assert problems and f"has no {MARKER} file" in problems[0]
    with pytest.raises(PermissionError):
        replace_location(foreign, "search")
    assert _keys("foreign/") == ["foreign/data.csv"]
    assert "pass --resume" in check_location(foreign, resume=False, overwrite=False)[0]
    ours = Location(f"s3://{BUCKET}/ours")
    create_location(ours, "search")
    ours.write_bytes("trials.parquet", b"old")
    assert check_location(ours, resume=False, overwrite=True) == []
    replace_location(ours, "search")
    assert _keys("ours/") == [f"ours/{MARKER}"]
    assert "does not exist" in check_location(Location(f"s3://{BUCKET}/none"), True, False)[0]


def _complete_in(db: bytes, tmp: Path) -> int:
    path = tmp / "probe.db"
    path.write_bytes(db)
    try:
        with sqlite3.connect(path) as c:
            return c.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.integration
def test_search_on_s3_writes_there_and_resumes_from_another_machine(s3_env, tmp_path):
    """A search with --output s3://...: Tune's state and every trial's checkpoints go to S3 (as
    Ray writes them from the workers), the study follows each finished trial, the results are
    uploaded. Killed after 2 trials, it is resumed by a driver with an empty home (another
    machine): nothing finished is lost, and `distopt report` rebuilds from S3 alone."""
    import optuna

    uri = f"s3://{BUCKET}/exp"
    base = subprocess_env()
    # Trials of several seconds, so that the kill lands between the 2nd and the last one.
    common = ["--config", str(CONFIGS / "smoke.yaml"), "search.num_trials=4",
              "search.max_concurrent=1", "train.epochs=4", "train.max_steps_per_epoch=100"]
    home1 = tmp_path / "home1"
    proc = subprocess.Popen([sys.executable, str(ROOT / "distopt" / "search.py"), *common,
                             "--output", uri], cwd=ROOT, env={**base, "HOME": str(home1)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    loc = Location(uri)
    deadline = time.time() + 600
    while time.time() < deadline:
        assert proc.poll() is None, "the search ended before it could be interrupted"
        if loc.is_file("study.db") and \
                _complete_in(loc.read_bytes(f"{BUCKET}/exp/study.db"), tmp_path) >= 2:
            break
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    keys = _keys("exp/")
    assert f"exp/{MARKER}" in keys and "exp/config.yaml" in keys and "exp/study.db" in keys
    assert any(k.startswith("exp/tune/") for k in keys)
    # One-worker trials train in their Tune actors: their checkpoints, and the finished
    # trials' artifacts, are in Tune's experiment directory on S3.
    assert any(k.startswith("exp/tune/") and k.endswith("/model.dopt") for k in keys)
    staged = sorted(p.name for p in (home1 / ".cache" / "distopt" / "staging").glob("*/*"))
    assert "tune" not in staged and "train" not in staged  # Ray wrote those to S3 only
    before = _complete_in(loc.read_bytes(f"{BUCKET}/exp/study.db"), tmp_path)
    assert before >= 2

    home2 = tmp_path / "home2"
    p = subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), "--output", uri,
                        "--resume"], cwd=ROOT, env={**base, "HOME": str(home2)},
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    keys = _keys("exp/")
    for name in ("trials.parquet", "report.md", "pareto.csv", "manifest.json", "pareto.png"):
        assert f"exp/{name}" in keys, keys
    assert any(k.startswith("exp/models/") and k.endswith(".dopt") for k in keys)
    down = tmp_path / "down"
    loc.download(["trials.parquet", "study.db"], down)
    rows = pq.read_table(down / "trials.parquet").to_pylist()
    assert len(rows) == 4 and all(r["status"] == "COMPLETE" for r in rows), \
        [(r["trial_id"], r["status"], r.get("error")) for r in rows]
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{down / 'study.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= \
        before

    home3 = tmp_path / "home3"
    r = subprocess.run([sys.executable, "-m", "distopt", "report", uri], cwd=ROOT,
                       env={**base, "HOME": str(home3)}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "rebuilt pareto.csv" in r.stdout, r.stderr[-2000:]
