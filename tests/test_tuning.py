"""The search on real Ray Tune + Optuna + Ray Train, on the embedded data."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from distopt import metrics as M
from distopt.compress import decode
from distopt.config import load_config
from distopt.data import load_splits
from distopt.space import to_optuna
from distopt.train_loop import evaluate_artifact

from conftest import CONFIGS, ROOT

SMOKE = CONFIGS / "smoke.yaml"


def test_space_to_optuna_distributions():
    cfg = load_config(None, ["search.space={train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}, "
                             "model.channels: {low: 8, high: 32, step: 8}, "
                             "compress.quant_bits: {choices: [4, 8]}, "
                             "compress.prune_ratio: {low: 0.0, high: 0.9}}"])
    d = to_optuna(cfg.search.space)
    assert d["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.channels"] == optuna.distributions.IntDistribution(8, 32, step=8)
    assert d["compress.quant_bits"] == optuna.distributions.CategoricalDistribution([4, 8])
    assert d["compress.prune_ratio"] == optuna.distributions.FloatDistribution(0.0, 0.9)


def test_default_config_searches_what_the_issue_asks():
    space = load_config(CONFIGS / "mnist_cnn.yaml").search.space
    for key in ("model.channels", "model.blocks", "model.dense_units", "regularization.l1",
                "regularization.l2", "regularization.dropout", "augment.rotation",
                "augment.shift", "augment.shear", "augment.zoom", "train.lr",
                "compress.prune_ratio", "compress.quant_bits"):
        assert key in space, key


def _search(*args: str, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
                          **kw)


def _study(out: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_search_end_to_end_and_report_rebuild(tmp_path):
    out = tmp_path / "smoke"
    p = _search("--config", str(SMOKE), "--output", str(out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "done, 0 failed of 4" in p.stdout  # the live table
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 4 and all(t["status"] == "COMPLETE" for t in trials)
    for t in trials:
        assert json.loads(t["config_json"])["compress"]["quant_bits"] == \
            t["param.compress.quant_bits"]
    # Optuna was told the final (decoded-artifact) metrics of every trial.
    study = _study(out)
    told = sorted(tuple(t.values) for t in study.trials)
    assert told == sorted((t[M.VAL_ACCURACY], t[M.SIZE_BYTES]) for t in trials)
    front = [t for t in trials if t["pareto"]]
    assert front
    splits = load_splits(load_config(SMOKE).data)
    for t in front:
        data = (out / t["artifact"]).read_bytes()
        assert len(data) == t[M.SIZE_BYTES]
        decode(data)
        assert evaluate_artifact(data, splits, "test")[M.TEST_ACCURACY] == t[M.TEST_ACCURACY]
    for name in ("pareto.csv", "pareto.png", "hypervolume.png", "report.md", "manifest.json"):
        assert (out / name).stat().st_size > 0, name
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["models"]) == len(front)
    assert {"torch", "ray", "optuna"} <= set(manifest["versions"])
    # `distopt report` rebuilds everything from the stored results alone.
    before = {n: (out / n).read_text() for n in ("pareto.csv", "report.md", "manifest.json")}
    for n in ("pareto.csv", "report.md", "manifest.json", "pareto.png", "hypervolume.png"):
        (out / n).unlink()
    r = subprocess.run([sys.executable, "-m", "distopt", "report", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert {n: (out / n).read_text() for n in before} == before
    assert (out / "pareto.png").exists() and (out / "hypervolume.png").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_failing_trials_fail_alone_and_busy_cluster_queues(ray_local, tmp_path):
    """Trials that raise (an invalid sampled config), run out of memory (a 6.4 TB layer: the
    allocation fails at once, nothing is touched) or diverge fail alone with their reason; the
    others complete. 2-worker trials on 2 CPUs with max_concurrent 3 queue instead of waiting
    forever for placement groups."""
    from distopt.report import collect, save_config, write_report
    from distopt.tuning import run_search

    cfg = load_config(SMOKE, [
        "search.num_trials=6", "search.max_concurrent=3", "search.seed=2",
        "train.num_workers=2", "train.cpus_per_worker=1", "train.optimizer=sgd",
        "search.space={train.lr: {choices: [0.01, 1.0e+12]}, model.blocks: {choices: [2, 5]}, "
        "model.dense_units: {choices: [16, 1000000000]}}",
    ])
    out = tmp_path / "faults"
    out.mkdir()
    save_config(cfg, out)
    grid = run_search(cfg, out)
    rows = collect(cfg, out, grid)
    write_report(out)
    assert len(rows) == 6
    kinds = set()
    for r in rows:
        lr, blocks, units = (r["param.train.lr"], r["param.model.blocks"],
                             r["param.model.dense_units"])
        ok = lr == 0.01 and blocks == 2 and units == 16
        assert r["status"] == ("COMPLETE" if ok else "FAILED"), r
        if blocks == 5:
            kinds.add("invalid")
            assert "model.blocks: got 5" in r["error"]
        elif units > 16:
            kinds.add("oom")
            assert "can't allocate memory" in r["error"]
        elif lr > 1:
            kinds.add("diverged")
            assert "non-finite loss at epoch 0" in r["error"]
        else:
            kinds.add("complete")
            assert r[M.SIZE_BYTES] > 0
    # The seed was chosen so that all four outcomes occur (Optuna's RandomSampler is seeded).
    assert kinds == {"invalid", "oom", "diverged", "complete"}
    report = (out / "report.md").read_text()
    assert "## Failed trials" in report
    assert not _study(out).get_trials(states=(optuna.trial.TrialState.RUNNING,))


def _complete_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as c:
            return c.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.integration
def test_killed_search_resumes_without_losing_completed_trials(tmp_path):
    out = tmp_path / "resume"
    args = ["--config", str(SMOKE), "--output", str(out), "search.num_trials=5",
            "search.max_concurrent=1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Own session: SIGKILL to the group takes the driver and the Ray instance it started.
    proc = subprocess.Popen([sys.executable, str(ROOT / "distopt" / "search.py"), *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while _complete_count(out / "study.db") < 2 and time.time() < deadline:
        assert proc.poll() is None, "search ended before it could be interrupted"
        time.sleep(1)
    time.sleep(3)  # let the next trial start, so that one is interrupted mid-run
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.params, t.values) for t in _study(out).trials
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(before) >= 2

    p = _search("--output", str(out), "--resume")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    study = _study(out)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    after = {t.number: (t.params, t.values) for t in study.trials
             if t.state == optuna.trial.TrialState.COMPLETE}
    for number, (params, values) in before.items():
        assert after[number] == (params, values)  # unchanged
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(rows) == 5 and sum(r["status"] == "COMPLETE" for r in rows) == 5
    finals = {tuple(v) for _, v in before.values()}
    assert finals <= {(r[M.VAL_ACCURACY], r[M.SIZE_BYTES]) for r in rows}


@pytest.mark.slow
@pytest.mark.integration
def test_impossible_trial_shape_is_rejected_up_front(ray_local):
    from distopt.tuning import check_fits, default_max_concurrent

    ok = load_config(SMOKE)
    assert check_fits(ok) == []
    assert default_max_concurrent(ok) == 2  # 1-CPU workers on 2 CPUs
    assert default_max_concurrent(load_config(SMOKE, ["train.cpus_per_worker=2"])) == 1
    too_many = load_config(SMOKE, ["train.num_workers=3", "train.cpus_per_worker=1"])
    assert "= 3 CPUs per trial, but the cluster has 2" in " ".join(check_fits(too_many))
    gpu = load_config(SMOKE, ["train.use_gpu=true"])
    assert "needs 1 GPUs, but the cluster has 0" in " ".join(check_fits(gpu))
    # trial_overrides count: the shape every trial actually asks for.
    via_overrides = load_config(SMOKE, ["search.trial_overrides={train.cpus_per_worker: 4}"])
    assert "no node has that many CPUs" in " ".join(check_fits(via_overrides))


@pytest.mark.slow
@pytest.mark.integration
def test_rnn_search_on_tokens_exports_a_decodable_front(tmp_path):
    """The text config's search, shortened: cell, width, embedding and compression are searched
    and the front's files decode to recurrent models that score what the report says."""
    out = tmp_path / "text"
    p = _search("--config", str(CONFIGS / "text_rnn.yaml"), "--output", str(out),
                "search.num_trials=3", "search.sampler=random", "search.max_concurrent=2",
                "search.trial_overrides={train.epochs: 1, train.max_steps_per_epoch: 10, "
                "train.cpus_per_worker: 1, compress.finetune_epochs: 1, train.precision: fp32}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 3 and all(t["status"] == "COMPLETE" for t in trials)
    splits = load_splits(load_config(CONFIGS / "text_rnn.yaml").data)
    for t in (t for t in trials if t["pareto"]):
        data = (out / t["artifact"]).read_bytes()
        model = decode(data).model
        assert model.spec.family == "rnn" and model.spec.cell == t["param.model.cell"]
        assert evaluate_artifact(data, splits, "test")[M.TEST_ACCURACY] == t[M.TEST_ACCURACY]
    assert "| " in (out / "report.md").read_text()
