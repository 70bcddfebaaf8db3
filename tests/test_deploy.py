"""distopt.load: a deployed model called on raw inputs scores what the reports say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distopt
from distopt import metrics as M
from distopt.compress import ArtifactError, encode
from distopt.config import load_config
from distopt.data import load_splits
from distopt.models import build_model, seed_cnn
from distopt.training import WorkerEnv, evaluate_artifact, fit

from conftest import TINY


@pytest.mark.slow
def test_load_gives_logits_for_raw_inputs_matching_the_decoded_file(tmp_path):
    cfg = load_config(None, TINY + ["compress.quantize.bits=4"])
    splits = load_splits(cfg.data)
    out = fit(cfg, WorkerEnv(), lambda *a, **k: None, splits=splits)
    path = tmp_path / "m.dopt"
    path.write_bytes(out["artifact"])
    model = distopt.load(path)
    assert not model.training and splits.x_test.dtype == np.uint8
    with torch.no_grad():
        logits = torch.cat([model(splits.x_test[i:i + 500])
                            for i in range(0, len(splits.x_test), 500)])
    assert logits.shape == (len(splits.x_test), 10) and logits.dtype == torch.float32
    accuracy = float((logits.argmax(1).numpy() == splits.y_test).mean())
    assert accuracy == evaluate_artifact(out["artifact"], splits, "test")[M.TEST_ACCURACY]


def test_load_refuses_a_file_without_input_normalization(tmp_path):
    path = tmp_path / "bare.dopt"
    path.write_bytes(encode(build_model(seed_cnn()), 8))  # no meta: no normalization recorded
    with pytest.raises(ArtifactError, match="no input normalization"):
        distopt.load(path)
    (tmp_path / "x.dopt").write_bytes(b"not an artifact")
    with pytest.raises(ArtifactError):
        distopt.load(tmp_path / "x.dopt")


def test_inputs_that_break_the_models_input_contract_are_refused_with_the_contract(tmp_path):
    """Floats in [0, 1] given to a model of uint8 pixels once gave 10% accuracy silently."""
    path = tmp_path / "m.dopt"
    meta = {"input": {"scale": 1 / 255, "mean": 0.13, "std": 0.3, "tokens": False}}
    path.write_bytes(encode(build_model(seed_cnn()).eval(), 8, meta))
    model = distopt.load(path)
    assert "integers in [0, 255]" in model.contract
    assert model(np.zeros((2, 1, 28, 28), np.uint8)).shape == (2, 10)
    assert model(np.full((1, 1, 28, 28), 255.0)).shape == (1, 10)  # raw values as floats: fine
    for bad, what in ((np.random.default_rng(0).random((2, 1, 28, 28)), "with fractions"),
                      (np.zeros((2, 28, 28), np.uint8), "got shape (2, 28, 28)"),
                      (np.full((1, 1, 28, 28), 300), "values in [300, 300]")):
        with pytest.raises(ValueError, match=r"takes raw values .* integers in \[0, 255\]") as e:
            model(bad)
        assert what in str(e.value)
