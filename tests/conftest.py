"""Shared fixtures: the full MNIST location, a local Ray instance, small configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# The tests and every process they start read no real home directory (a head node's
# ~/ray_bootstrap_config.yaml, Ray's token, caches) and join no Ray cluster already running on
# the machine (`ray start`): "local" makes each search or run start its own local instance.
# Tests that start a cluster of their own set RAY_ADDRESS (or drop it) for that cluster.
os.environ["HOME"] = tempfile.mkdtemp(prefix="distopt-test-home-")
os.environ["RAY_ADDRESS"] = "local"

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Full MNIST lives beside the project in CI and dev machines, never in a user's clone.
MNIST_DIR = Path(os.environ.get("DISTOPT_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI", "").lower() == "true":  # CI has it: a missing copy is a failure
            pytest.fail(f"CI=true but full MNIST is not at {MNIST_DIR} (set DISTOPT_MNIST_DIR)")
        pytest.skip(f"full MNIST not found at {MNIST_DIR} (set DISTOPT_MNIST_DIR); only "
                    "development and CI machines have it")
    return MNIST_DIR


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real local Ray instance (2 CPUs, no dashboard) for one module's in-process Ray tests.

    Module-scoped: the CLI tests start their own instances in subprocesses, and two instances
    on one machine confuse Ray's helper actors that look for "the" local cluster."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


# A few optimizer steps per epoch: real training on real data, in seconds.
TINY = ["train.epochs=2", "train.max_steps_per_epoch=5", "train.batch_size=64",
        "compress.prune.ratio=0.5", "compress.finetune_epochs=1", "train.precision=fp32"]
