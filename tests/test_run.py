"""One trial on real Ray Train: a local Ray instance with 2 CPUs, gloo DDP on CPU."""

from __future__ import annotations

import pytest

from distopt import metrics as M
from distopt.config import load_config
from distopt.data import load_splits
from distopt.orchestration.run import run_trial
from distopt.training import evaluate_artifact

from _raytools import own_processes
from conftest import TINY



@pytest.mark.slow
@pytest.mark.integration
def test_one_worker_trial_and_rerun_resumes(ray_local, tmp_path):
    cfg = load_config(None, TINY + ["train.cpus_per_worker=2"])
    res = run_trial(cfg, tmp_path, name="t1", evaluate_test=True)
    assert [h[M.PHASE] for h in res.history] == ["train", "train", "finetune"]
    assert res.metrics[M.PHASE] == "final"
    assert res.metrics[M.SIZE_BYTES] == len(res.artifact)
    splits = load_splits(cfg.data)
    assert evaluate_artifact(res.artifact, splits, "test")["test_accuracy"] == \
        pytest.approx(res.metrics[M.TEST_ACCURACY])
    # Same name and storage: Ray Train resumes from the last checkpoint; nothing is retrained.
    again = run_trial(cfg, tmp_path, name="t1", evaluate_test=True)
    assert again.history == []
    assert again.metrics[M.SIZE_BYTES] == res.metrics[M.SIZE_BYTES]
    assert again.metrics[M.VAL_ACCURACY] == res.metrics[M.VAL_ACCURACY]


@pytest.mark.slow
@pytest.mark.integration
def test_two_ddp_workers_aggregate_over_all_ranks(ray_local, tmp_path):
    """2 workers x 1 CPU fit the 2-CPU machine; metrics cover every rank's shard."""
    cfg = load_config(None, TINY + ["train.num_workers=2", "train.cpus_per_worker=1"])
    res = run_trial(cfg, tmp_path, name="ddp", evaluate_test=False)
    splits = load_splits(cfg.data)
    # Rank 0 alone sees half the validation set; the reported accuracy is the whole set's.
    whole = evaluate_artifact(res.artifact, splits, "val")["val_accuracy"]
    assert res.metrics[M.VAL_ACCURACY] == pytest.approx(whole, abs=1e-9)
    assert M.TEST_ACCURACY not in res.metrics  # the test set is not touched unless asked
    assert len(res.history) == 3


@pytest.mark.slow
@pytest.mark.integration
def test_killed_worker_restarts_from_the_last_epoch_checkpoint(ray_local, tmp_path):
    """SIGKILL the Ray Train worker mid-trial: the group restarts (max_failures=1) from the last
    epoch checkpoint, not from epoch 0, and the trial completes."""
    import os
    import signal
    import threading
    import time

    cfg = load_config(None, ["train.epochs=6", "train.cpus_per_worker=2", "train.max_failures=1",
                             "train.precision=fp32", "augment.rotation=20", "augment.zoom=0.1",
                             "compress.prune.ratio=0"])
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("result", run_trial(cfg, tmp_path, name="kill",
                                                          evaluate_test=False)), daemon=True)
    thread.start()
    seen: set[str] = set()
    deadline = time.time() + 300
    # A second checkpoint directory appears only after the first report returned, so the first
    # checkpoint is committed by then (the controller polls reports every 0.5 s).
    while len(seen) < 2 and time.time() < deadline:
        run_dir = tmp_path / "kill"
        if run_dir.exists():
            seen |= {p.name for p in run_dir.glob("checkpoint_*")}
        time.sleep(0.05)  # polls for the event; the kill follows it at once
    workers = own_processes(b"RayTrainWorker")  # of this test's Ray instance only
    assert workers, "no Ray Train worker process found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    res = box["result"]
    # The restarted worker's own history starts after a checkpoint, never at epoch 0, and
    # holds fewer epochs than the run: the epochs before the kill were not trained again.
    assert res.history and res.history[0][M.EPOCH] >= 1
    assert len(res.history) < 6
    assert res.history[-1][M.EPOCH] == 5 and res.metrics[M.PHASE] == "final"


def test_finalizer_exit_reports_are_dropped_once_however_many_trials_an_actor_runs():
    import sys
    from types import SimpleNamespace

    from distopt.orchestration.run import ignore_exit_in_finalizers

    seen = []
    original = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        ignore_exit_in_finalizers()
        hook = sys.unraisablehook
        ignore_exit_in_finalizers()  # a reused actor's next trial
        assert sys.unraisablehook is hook
        hook(SimpleNamespace(exc_value=SystemExit(1)))
        other = SimpleNamespace(exc_value=ValueError("kept"))
        hook(other)
        assert seen == [other]
    finally:
        sys.unraisablehook = original


def test_a_stored_teacher_is_reused_and_a_missing_one_trained_once(tmp_path, monkeypatch):
    """The caching rule of ensure_teacher. run_trial is replaced by a recorder here (the real
    teacher job runs in tests/test_tuning.py's distillation search)."""
    import distopt.orchestration.teacher as teacher_mod
    from distopt.orchestration.run import TrialResult
    from distopt.orchestration.teacher import ensure_teacher
    from distopt.storage import Location

    calls = []

    def fake_run_trial(cfg, storage, name="train", evaluate_test=True, log_epochs=True):
        assert not log_epochs  # quiet: the driver logs the teacher's result
        calls.append((cfg, name))
        return TrialResult({M.VAL_ACCURACY: 0.9, M.TRAIN_SECONDS: 1.0}, b"teacher-bytes", [])

    monkeypatch.setattr(teacher_mod, "run_trial", fake_run_trial)
    out = Location(str(tmp_path))
    plain = load_config(None)
    assert ensure_teacher(plain, out, tmp_path / "ray") is plain and not calls
    cfg = load_config(None, ["train.distill_alpha=0.5"])
    taught = ensure_teacher(cfg, out, tmp_path / "ray")
    assert taught.train.teacher_path == str(tmp_path / M.TEACHER_FILE)
    assert (tmp_path / M.TEACHER_FILE).read_bytes() == b"teacher-bytes"
    assert len(calls) == 1 and calls[0][1] == "teacher"
    assert calls[0][0].compress.quantize.bits == 32 and calls[0][0].train.distill_alpha == 0
    again = ensure_teacher(cfg, out, tmp_path / "ray")  # a resumed search: stored, not retrained
    assert again.train.teacher_path == taught.train.teacher_path and len(calls) == 1
