"""The `distopt` command end to end, in fresh processes as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distopt import metrics as M
from distopt.compress import decode
from distopt.config import load_config

from _raytools import assert_quiet
from conftest import CONFIGS, ROOT, TINY, subprocess_env

# Tests that train or start Ray are marked slow one by one: the others here start neither.


def distopt(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distopt", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=subprocess_env())


@pytest.mark.slow
@pytest.mark.integration
def test_train_then_evaluate(tmp_path):
    out = tmp_path / "run"
    p = distopt("train", "--config", str(CONFIGS / "mnist_cnn.yaml"), "--output", str(out), *TINY)
    assert p.returncode == 0, p.stdout + p.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_accuracy", "test_accuracy", "size_bytes", "params", "nonzero_params",
                "dense_fp32_bytes", "precision", "compression_ratio"):
        assert key in metrics
    assert metrics["size_bytes"] == (out / "model.dopt").stat().st_size
    assert "epoch   0 train" in p.stdout + p.stderr and "test acc" in p.stdout
    e = distopt("evaluate", str(out / "model.dopt"))
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    # The output exists now: a second run must choose --resume or --overwrite.
    again = distopt("train", "--output", str(out), *TINY)
    assert again.returncode == 2 and "--resume" in again.stderr
    # One CPU worker trained in the command's own process (as a search trial in its actor):
    # its epoch checkpoints are there, and no Ray Train run was made.
    assert (out / "ray" / "local" / "state.pt").exists() and not (out / "ray" / "train").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_distopt_train_interrupted_resumes_to_the_same_model(tmp_path, signum):
    """A signal mid-training stops `distopt train` cleanly (exit 130, the resume command last);
    `--resume` continues from the last epoch checkpoint and ends with the very file and
    metrics an uninterrupted run gives. The signal is sent once the first epoch's checkpoint
    exists, with epochs still to run."""
    overrides = ["train.epochs=3", "train.max_steps_per_epoch=25", "train.batch_size=64",
                 "compress.prune.ratio=0.5", "compress.finetune_epochs=2",
                 "train.precision=fp32"]
    whole = tmp_path / "whole"
    assert distopt("train", "--output", str(whole), *overrides).returncode == 0
    out = tmp_path / "cut"
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, "-m", "distopt", "train", "--output", str(out),
                             *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    state = out / "ray" / "local" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polls for the event (the first checkpoint); decides nothing
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and signal.Signals(signum).name in stdout
    assert stdout.strip().splitlines()[-1].strip() == \
        f"distopt train --output {out} --resume"
    assert not (out / "model.dopt").exists()
    p = distopt("train", "--output", str(out), "--resume")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resuming from the checkpoint of epoch" in p.stdout + p.stderr
    assert (out / "model.dopt").read_bytes() == (whole / "model.dopt").read_bytes()
    cut, full = (json.loads((d / "metrics.json").read_text()) for d in (out, whole))
    assert cut[M.VAL_ACCURACY] == full[M.VAL_ACCURACY]
    history = json.loads((out / "history.json").read_text())
    assert [h[M.EPOCH] for h in history] == [0, 1, 2, 3, 4]  # none lost, none repeated


@pytest.mark.slow
def test_distopt_train_on_several_workers_runs_a_ray_train_job(tmp_path):
    out = tmp_path / "run"
    p = distopt("train", "--output", str(out), *TINY, "train.executor=ray_train")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "ray" / "train").is_dir() and not (out / "ray" / "local").exists()
    assert json.loads((out / "metrics.json").read_text())[M.SIZE_BYTES] == \
        (out / "model.dopt").stat().st_size


def test_evaluate_rejects_a_foreign_file(tmp_path):
    bad = tmp_path / "x.dopt"
    bad.write_bytes(b"GIF89a" + bytes(100))
    p = distopt("evaluate", str(bad))
    assert p.returncode == 1 and "not a distopt artifact" in p.stderr


def test_python_m_and_console_script_agree():
    p = subprocess.run(["distopt", "config", "--reference"], capture_output=True, text=True)
    q = distopt("config", "--reference")
    assert p.returncode == q.returncode == 0 and p.stdout == q.stdout


# ---- The acceptance numbers, measured for real (each a few minutes on 2 cores) ----


def _train_metrics(tmp_path: Path, *overrides: str) -> dict:
    return _train(tmp_path, "mnist_cnn.yaml", *overrides)


def _train(tmp_path: Path, config: str, *overrides: str) -> dict:
    out = tmp_path / "run"
    p = distopt("train", "--config", str(CONFIGS / config), "--output", str(out), *overrides)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.integration
def test_default_config_on_embedded_data_reaches_97(tmp_path):
    m = _train_metrics(tmp_path)
    assert m["test_accuracy"] >= 0.97, m


@pytest.mark.slow
@pytest.mark.integration
def test_full_mnist_seed_cnn_reaches_99(tmp_path, mnist_dir):
    m = _train_metrics(tmp_path, "data.name=mnist", f"data.path={mnist_dir}",
                       "compress.prune.ratio=0", "compress.quantize.bits=32")
    assert m["params"] == 225_034
    assert m["test_accuracy"] >= 0.990, m


@pytest.mark.slow
@pytest.mark.integration
def test_full_mnist_pruned_90_8bit_is_small_and_accurate(tmp_path, mnist_dir):
    m = _train_metrics(tmp_path, "data.name=mnist", f"data.path={mnist_dir}",
                       "compress.prune.ratio=0.9", "compress.quantize.bits=8",
                       "compress.finetune_epochs=1")
    assert m["test_accuracy"] >= 0.988, m
    assert m["size_bytes"] <= 40_000, m
    assert m["dense_fp32_bytes"] == 900_136


# Sequential MNIST (the issue asks: seed_rnn shape >= 97%, a GRU of the same width >= 98%, each
# within 5 epochs). Measured here: 97.69% and 99.03% (dense, float32 artifacts).
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("cell,target", [("rnn", 0.970), ("gru", 0.980)])
def test_full_mnist_rows_rnn_and_gru_reach_their_targets(tmp_path, mnist_dir, cell, target):
    m = _train(tmp_path, "mnist_rnn.yaml", "data.name=mnist", f"data.path={mnist_dir}",
               f"model.cell={cell}", "train.epochs=5", "compress.prune.ratio=0",
               "compress.quantize.bits=32")
    assert m["test_accuracy"] >= target, m


@pytest.mark.slow
@pytest.mark.integration
def test_ray_train_trials_are_quiet_and_cost_their_worker_group_start(tmp_path):
    """train.executor=ray_train: each trial a TorchTrainer job (what several workers or GPUs
    use). Its console is as quiet as the trial actors', and its trials show the worker-group
    start-up that the trial actors avoid."""
    out = tmp_path / "rt"
    # Here, not in test_tuning.py: a second Ray instance on the machine (that module's
    # in-process one) makes Ray Train's placement-group cleaner print tracebacks (upstream).
    p = distopt("search", "--config", str(CONFIGS / "smoke.yaml"), "--output", str(out),
                "train.executor=ray_train", "search.num_trials=2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert_quiet(p.stderr)
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["COMPLETE"] * 2
    assert all(t[M.OVERHEAD_S] > 2 for t in trials)  # measured 15-19 s here
    assert all((out / "train" / t["trial_id"]).is_dir() for t in trials)



@pytest.mark.slow
@pytest.mark.integration
def test_conv1d_search_on_three_objectives_then_onnx_export_of_its_front(tmp_path):
    """1-D signals through the whole product: a conv1d search with ONNX Runtime latency as a
    third objective, then `distopt export`: every front model as ONNX, checked against
    PyTorch on the whole test set, its bytes in the manifest."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / "sig"
    p = distopt("search", "--config", str(CONFIGS / "signals_conv1d.yaml"), "--output", str(out),
                "search.time_budget_s=null", "search.num_trials=4", "search.scheduler=fifo",
                "search.max_concurrent=2", "train.epochs=2", "train.max_steps_per_epoch=15")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    done = [r for r in rows if r["status"] == "COMPLETE"]
    assert len(done) == 4 and all(r[M.ORT_LATENCY_MS] > 0 for r in done)
    assert {json.loads(r["config_json"])["model"]["family"] for r in done} == {"conv1d"}
    front = [r for r in rows if r["pareto"]]

    p = distopt("export", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    manifest = json.loads((out / M.MANIFEST_FILE).read_text())
    assert len(manifest["models"]) == len(front) >= 1
    for model in manifest["models"]:
        onnx_info = model["onnx"]
        assert onnx_info[M.ONNX_BYTES] == (out / onnx_info["file"]).stat().st_size
        assert onnx_info["samples"] == 2000 and onnx_info["agreement"] >= 0.999
        assert abs(onnx_info["test_accuracy_onnxruntime"]
                   - onnx_info["test_accuracy_pytorch"]) <= 0.0005
        # The check's PyTorch accuracy is the report's test accuracy of the same file.
        assert onnx_info["test_accuracy_pytorch"] == pytest.approx(
            model["metrics"][M.TEST_ACCURACY], abs=1e-9)
        assert f"{onnx_info[M.ONNX_BYTES]:,}" in p.stdout
    p = distopt("export", str(out), "--trial", "nope")
    assert p.returncode == 2 and "--trial: got 'nope'" in p.stderr
    # A rebuilt report keeps the exports that are still current, and drops a missing one.
    before = json.loads((out / M.MANIFEST_FILE).read_text())["models"]
    assert distopt("report", str(out)).returncode == 0
    after = json.loads((out / M.MANIFEST_FILE).read_text())["models"]
    assert [m.get("onnx") for m in after] == [m["onnx"] for m in before]
    (out / before[0]["onnx"]["file"]).unlink()
    assert distopt("report", str(out)).returncode == 0
    after = json.loads((out / M.MANIFEST_FILE).read_text())["models"]
    assert "onnx" not in after[0] and all("onnx" in m for m in after[1:])


@pytest.mark.slow
@pytest.mark.integration
def test_a_distilling_search_trains_its_teacher_once_and_every_trial_learns_from_it(tmp_path):
    out = tmp_path / "kd"
    # Here, not in test_tuning.py: the teacher is a Ray Train job, and with the in-process
    # instance of that module's tests alive, Train's placement-group cleaner finds two local
    # Ray instances and logs a traceback (upstream; README, Monitoring).
    p = distopt("search", "--config", str(CONFIGS / "smoke.yaml"), "--output", str(out),
                "search.num_trials=3",
                "search.space={train.distill_alpha: {choices: [0.0, 0.5]}, "
                "compress.quantize.bits: {choices: [4, 8]}}", "train.distill_temperature=2.0")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("teacher: training") == 1
    assert_quiet(p.stderr)
    teacher = out / M.TEACHER_FILE
    decoded = decode(teacher.read_bytes())
    assert all(e["bits"] == 32 for e in decoded.tensors)  # dense float32: no compression
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(rows) == 3 and all(r["status"] == "COMPLETE" for r in rows)
    for r in rows:  # every trial was pointed at the one stored teacher
        assert json.loads(r["config_json"])["train"]["teacher_path"] == str(teacher)


# ---- what a user gets wrong: a clear message, exit 2, no traceback, nothing left behind ----


def _no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr


def test_config_naming_a_directory_is_a_clear_error(tmp_path):
    p = distopt("config", "--config", str(tmp_path))
    assert p.returncode == 2 and "is a directory; name a YAML file" in p.stderr
    _no_traceback(p)


def test_version_and_did_you_mean():
    p = distopt("--version")
    assert p.returncode == 0 and p.stdout.startswith("distopt ")
    p = distopt("config", "trian.epochs=3")
    assert p.returncode == 2 and "did you mean 'train'?" in p.stderr
    _no_traceback(p)


def test_config_says_it_did_not_read_the_data_unless_asked(tmp_path):
    p = distopt("config", "--config", str(CONFIGS / "smoke.yaml"))
    assert p.returncode == 0 and "the data was not read; --check-data" in p.stderr
    bad = tmp_path / "bad.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq_

    pq_.write_table(pa.table({"image": [b"x"], "label": ["seven"]}), bad)
    p = distopt("config", "--check-data", "data.name=parquet", f"data.path={bad}")
    assert p.returncode == 2 and "data has" in p.stderr
    _no_traceback(p)


def test_a_dead_ray_address_is_refused_at_once_and_leaves_no_output(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dead"
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    p = subprocess.run([sys.executable, "-m", "distopt", "search", "--config",
                        str(CONFIGS / "smoke.yaml"), "--output", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there" in p.stderr
    assert not out.exists()
    _no_traceback(p)


def test_ray_address_auto_without_a_cluster_here_is_refused_with_what_to_do(tmp_path):
    """RAY_ADDRESS=auto looks for a cluster `ray start` left on this machine (its address
    file): with none, Ray's ConnectionError becomes the same kind of message, exit 2, nothing
    left behind."""
    if Path("/tmp/ray/ray_current_cluster").exists():
        pytest.skip("a cluster started with `ray start` runs here: auto would join it")
    out = tmp_path / "auto"
    env = {**os.environ, "RAY_ADDRESS": "auto"}
    p = subprocess.run([sys.executable, "-m", "distopt", "search", "--config",
                        str(CONFIGS / "smoke.yaml"), "--output", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "RAY_ADDRESS=auto:" in p.stderr and "unset RAY_ADDRESS" in p.stderr
    assert not out.exists()
    _no_traceback(p)


@pytest.mark.slow
def test_an_unreachable_s3_output_is_a_clear_error(tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    p = subprocess.run([sys.executable, "-m", "distopt", "search", "--config",
                        str(CONFIGS / "smoke.yaml"), "--output", "s3://bucket/exp"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 2 and "output s3://bucket/exp: cannot be reached" in p.stderr
    _no_traceback(p)


def test_main_twice_in_one_process_keeps_one_console_handler(capsys):
    import logging

    from distopt.cli import main

    logger = logging.getLogger("distopt")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        for _ in range(2):
            assert main(["config", "--config", str(CONFIGS / "smoke.yaml")]) == 0
        assert len(logger.handlers) == 1
    finally:  # this process's other tests read distopt's records through the root logger
        logger.handlers[:] = saved[0]
        logger.propagate, logger.level = saved[1], saved[2]


def test_report_on_a_search_that_has_not_finished_says_how_to_finish_it(tmp_path):
    from distopt.results.report import save_config
    from distopt.workdir import create_output

    out = tmp_path / "running"
    create_output(out, "search")
    save_config(load_config(CONFIGS / "smoke.yaml"), out)
    p = distopt("report", str(out))
    assert p.returncode == 2 and "has not finished" in p.stderr and "--resume" in p.stderr
    _no_traceback(p)


@pytest.mark.slow
@pytest.mark.integration
def test_your_own_click_log_with_string_ids_searched_by_auc_then_exported_to_onnx(tmp_path):
    """Bring-your-own tabular Parquet, string ids included, through the whole product: the
    recsys family searched on validation AUC and bytes, the report's quality columns in AUC,
    then every front model as ONNX, checked against PyTorch on the test file."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import pyarrow as pa
    from distopt.data.clicks import generate_clicks

    log = generate_clicks(12_000, seed=5)
    log = log.set_column(0, "user_id", pa.array([f"user-{u}" for u in
                                                 log.column("user_id").to_pylist()]))
    pq.write_table(log.slice(0, 10_000), tmp_path / "train.parquet")
    pq.write_table(log.slice(10_000), tmp_path / "test.parquet")
    out = tmp_path / "clicks"
    p = distopt("search", "--config", str(CONFIGS / "clicks.yaml"), "--output", str(out),
                "data.name=parquet", f"data.path={tmp_path / 'train.parquet'}",
                f"data.test_path={tmp_path / 'test.parquet'}", "data.label_column=click",
                "data.categorical_columns=[user_id, item_id, category, device]",
                "data.numeric_columns=[price, position]",
                "data.column_buckets={category: 256, device: 32}", "search.time_budget_s=null",
                "search.num_trials=3", "search.scheduler=fifo", "search.max_concurrent=2",
                "train.epochs=2")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    done = [r for r in rows if r["status"] == "COMPLETE"]
    assert len(done) == 3 and all(0.55 < r[M.VAL_AUC] < 1 for r in done)
    front = [r for r in rows if r["pareto"]]
    assert front and all(0.55 < r[M.TEST_AUC] < 1 for r in front)
    assert all(0 < r[M.EMBEDDING_FLASH_BYTES] < r[M.FLASH_BYTES] for r in front)
    report = (out / "report.md").read_text()
    assert "| val AUC | test AUC | val acc | test acc |" in report
    p = distopt("export", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    for model in json.loads((out / M.MANIFEST_FILE).read_text())["models"]:
        check = model["onnx"]
        assert check["samples"] == 2000 and check["agreement"] == 1.0
        assert check["max_abs_logit_diff"] < 1e-4
        assert check["test_auc_onnxruntime"] == pytest.approx(check["test_auc_pytorch"],
                                                              abs=1e-3)
        assert model["metrics"][M.TEST_AUC] == next(
            r[M.TEST_AUC] for r in front if r["trial_id"] == model["trial_id"])
