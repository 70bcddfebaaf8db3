"""Your own model as a family (model.family: package.module:Factory): configs that name it, a
training run of it, its files refused until trusted, and a search of the example end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

import distopt
from distopt.compress import decode, encode
from distopt.config import ConfigError, load_config
from distopt.export import ExportError, to_onnx
from distopt.models import ModelSpec, build_model
from distopt.training import WorkerEnv, fit

from conftest import ROOT, subprocess_env

EXAMPLE = ROOT / "examples" / "tinynet.yaml"
QUICK = ["train.epochs=1", "train.max_steps_per_epoch=5", "compress.cluster.k=8"]


def _fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a new Python process, outside the repository (nothing trusted, nothing on the
    path but what the code adds)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, cwd="/", env=env)


def test_a_config_naming_a_factory_is_checked_before_anything_runs():
    cfg = load_config(EXAMPLE)
    assert cfg.model.family == "examples.tinynet:TinyNet"
    for overrides, message in (
            (["model.family=examples.nowhere:TinyNet"], "No module named 'examples.nowhere'"),
            (["model.family=examples.tinynet:Missing"], "has no attribute 'Missing'"),
            (["model.family=cnn2"], "or 'package.module:Factory' (your own model)"),
            (["compress.prune.kind=structured"], "structured pruning rewrites the built-in"),
    ):
        with pytest.raises(ConfigError, match="model.family|compress.prune.kind") as e:
            load_config(EXAMPLE, overrides)
        assert message in str(e.value), str(e.value)


def test_the_factory_gets_the_model_section_and_the_spec_rebuilds_it():
    spec = ModelSpec.external("examples.tinynet:TinyNet", (1, 28, 28), 10,
                              {"channels": 4, "dense_units": 8, "dropout": 0.0})
    model = build_model(spec)
    assert model.spec is spec and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="expected 'package.module:Name'"):
        ModelSpec.external("tinynet", (1, 28, 28), 10)


def test_encoding_a_plain_module_says_what_it_needs():
    with pytest.raises(ValueError, match=r"has no \.spec .* ModelSpec\.external"):
        encode(torch.nn.Linear(3, 4), 8)


def test_a_trained_file_of_your_model_decodes_only_where_its_code_is_trusted(tmp_path):
    cfg = load_config(EXAMPLE, QUICK)
    out = fit(cfg, WorkerEnv(), lambda m, s, f=None: None)
    path = tmp_path / "tiny.dopt"
    path.write_bytes(out["artifact"])
    dec = decode(out["artifact"])  # trusted here: this process loaded the config
    assert dec.model.spec.factory == "examples.tinynet:TinyNet"
    assert {t.get("coding") for t in dec.tensors} == {"codebook", "float"}
    x = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    expected = distopt.load(path)(x)

    refused = _fresh("import sys, distopt\ntry:\n    distopt.load(sys.argv[1])\n"
                     "except distopt.ArtifactError as e:\n    print('REFUSED', e)\n", str(path))
    assert "REFUSED" in refused.stdout and "--trust-code" in refused.stdout, refused.stderr
    # Trusted: the factory is imported from the current directory, as `python -m` would.
    code = ("import sys, os, torch, distopt\nos.chdir(sys.argv[2])\n"
            "m = distopt.load(sys.argv[1], trust_code=True)\n"
            "print(m(torch.zeros(3, 1, 28, 28, dtype=torch.uint8)).tolist())\n")
    trusted = _fresh(code, str(path), str(ROOT))
    assert trusted.returncode == 0, trusted.stderr
    assert torch.tensor(json.loads(trusted.stdout)).allclose(expected, atol=1e-6)
    with pytest.raises(ExportError, match="your own model"):
        to_onnx(dec)


def test_distopt_evaluate_needs_trust_code_for_your_model(tmp_path):
    out = fit(load_config(EXAMPLE, QUICK), WorkerEnv(), lambda m, s, f=None: None)
    path = tmp_path / "tiny.dopt"
    path.write_bytes(out["artifact"])
    run = [sys.executable, "-m", "distopt", "evaluate", str(path)]
    refused = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert refused.returncode == 1 and "--trust-code" in refused.stderr
    ok = subprocess.run(run + ["--trust-code"], capture_output=True, text=True, timeout=300,
                        cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert 0 <= json.loads(ok.stdout)["test_accuracy"] <= 1


@pytest.mark.slow
@pytest.mark.integration
def test_the_example_model_is_searched_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    env = subprocess_env()
    p = subprocess.run([sys.executable, "distopt/search.py", "--config", str(EXAMPLE),
                        "--output", str(out), "search.num_trials=3", "train.epochs=2",
                        "train.max_steps_per_epoch=25", "train.lr=0.01"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert sum(r["status"] == "COMPLETE" for r in rows) >= 3
    front = [r for r in rows if r["pareto"]]
    assert front and all((out / r["artifact"]).is_file() for r in front)
    for r in front:
        spec = decode((out / r["artifact"]).read_bytes(), trust_code=True).model.spec
        assert spec.family == "external" and json.loads(r["config_json"])["model"]["family"] \
            == "examples.tinynet:TinyNet"
