from __future__ import annotations

import subprocess
import sys

import torch

from distopt.config import load_config
from distopt.models import ModelSpec, build_model, count_params, seed_cnn, spec_from_config

from conftest import CONFIGS


def test_seed_cnn_parameter_count_matches_keras():
    # Conv(1->32,3x3)=320, Conv(32->64,3x3)=18,496, Dense(1600->128)=204,928, Dense(128->10)=1,290
    assert count_params(build_model(seed_cnn())) == 225_034


def test_seed_config_builds_the_seed_cnn():
    spec = spec_from_config(load_config(CONFIGS / "mnist_cnn.yaml"))
    assert spec.conv_channels == (32, 64) and spec.dense_units == (128,)
    assert count_params(build_model(spec)) == 225_034


def test_families_forward_shapes():
    for overrides in (["model.family=mlp", "model.blocks=2", "model.dense_units=300"],
                      ["model.channels=8", "model.blocks=3", "model.dense_layers=0"],
                      ["model.channels=4", "model.blocks=1", "model.kernel_size=5"]):
        spec = spec_from_config(load_config(None, overrides))
        out = build_model(spec)(torch.zeros(3, 1, 28, 28))
        assert out.shape == (3, 10)


def test_spec_round_trips_through_dict():
    spec = seed_cnn(dropout=0.25)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_models_import_nothing_of_ray_or_optuna():
    code = "import sys, distopt.models; print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
