"""The store of dense models that trials of one search share (search.reuse_dense)."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import pytest
import torch

from distopt.config import load_config
from distopt.training.dense_store import DenseStore, DenseWeights, dense_key


@contextlib.contextmanager
def _warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Records of the module's logger, on it directly: the CLI's and the workers' logging
    setup stops "distopt" records propagating to the root logger caplog listens on."""
    logger = logging.getLogger("distopt.training.dense_store")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="distopt.training.dense_store"):
            yield
    finally:
        logger.removeHandler(caplog.handler)


def _weights() -> DenseWeights:
    return DenseWeights(spec={"family": "mlp"}, state={"w": torch.arange(6.0).reshape(2, 3)},
                        dense_epochs=2, precision="bf16",
                        history=[{"epoch": 0, "phase": "train", "val_accuracy": 0.5},
                                 {"epoch": 1, "phase": "train", "val_accuracy": 0.7}])


def test_an_entry_comes_back_as_stored_under_its_dense_configuration(tmp_path):
    cfg = load_config(None, ["compress.quantize.bits=8"])
    DenseStore(str(tmp_path), "trial_a").save(cfg, _weights())
    assert [p.name for p in tmp_path.iterdir()] == [dense_key(cfg) + ".pt"]  # no temporary left
    other_compression = load_config(None, ["compress.quantize.bits=4", "compress.prune.ratio=0.9"])
    got = DenseStore(str(tmp_path), "trial_b").load(other_compression)
    assert got is not None and got.source == "" and got.precision == "bf16"
    assert got.dense_epochs == 2 and got.history == _weights().history
    assert torch.equal(got.state["w"], _weights().state["w"])
    assert DenseStore(str(tmp_path), "trial_b").load(load_config(None, ["train.lr=0.01"])) is None


def test_a_damaged_entry_is_none_with_a_warning_not_a_failed_trial(tmp_path, caplog):
    cfg = load_config(None)
    (tmp_path / f"{dense_key(cfg)}.pt").write_bytes(b"not a torch file")
    with _warnings(caplog):
        assert DenseStore(str(tmp_path), "t").load(cfg) is None
    assert "unreadable" in caplog.text and "training it again" in caplog.text


def test_an_unwritable_store_logs_and_lets_the_trial_go_on(tmp_path, caplog):
    blocker = tmp_path / "dense"
    blocker.write_text("a file where the store's directory should be")
    with _warnings(caplog):
        DenseStore(str(blocker), "t").save(load_config(None), _weights())
    assert "could not write" in caplog.text
