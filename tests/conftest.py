"""Shared fixtures: the full MNIST location, a local Ray instance, small configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# The searches and runs the tests start (subprocess_env) join no Ray cluster already running on
# the machine (`ray start`): RAY_ADDRESS=local makes each start its own local instance; and they
# read no real home directory (a head node's ~/ray_bootstrap_config.yaml, caches). This process
# keeps both: Ray's client APIs let RAY_ADDRESS override the address they are given, Ray reads
# its token from ~/.ray, and the `ray up` test's nodes are ssh logins with the real HOME. Tests
# that start a cluster of their own set RAY_ADDRESS for that cluster.
TEST_HOME = tempfile.mkdtemp(prefix="distopt-test-home-")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a search or run a test starts: its own Ray instance, its own HOME."""
    return {**os.environ, "RAY_ADDRESS": "local", "HOME": TEST_HOME, **extra}

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
def splits():  # noqa: ANN201 - the embedded data set's splits (distopt.data.Splits)
    """The embedded data set (mnist-mini), loaded once per module."""
    from distopt.config import load_config
    from distopt.data import load_splits

    return load_splits(load_config(None).data)


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
