"""One trial on real Ray Train: a local Ray instance with 2 CPUs, gloo DDP on CPU."""

from __future__ import annotations

import pytest

from distopt import metrics as M
from distopt.config import load_config
from distopt.data import load_splits
from distopt.run import run_trial
from distopt.train_loop import evaluate_artifact

from conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.integration]


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
