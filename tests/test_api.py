"""distopt.search from Python: the command's checks before anything starts, and a search whose
result holds the front, the trials and the model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import distopt
from distopt.config import ConfigError, load_config

from conftest import CONFIGS, ROOT, subprocess_env


def test_bad_searches_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("not distopt's")
    with pytest.raises(ConfigError) as e:
        distopt.search(CONFIGS / "smoke.yaml", out, overrides=["search.space={}"])
    text = str(e.value)
    assert "search.space: got {}" in text and "exists and is not empty" in text
    assert sorted(p.name for p in out.iterdir()) == ["something"]
    with pytest.raises(ConfigError, match="train.epochs: got 0"):
        distopt.search(load_config(CONFIGS / "smoke.yaml"), tmp_path / "new",
                       overrides=["train.epochs=0"])
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_search_from_python_returns_the_front_trials_and_models(tmp_path):
    """In a fresh process, as a user's script runs it (Ray started by the call)."""
    out = tmp_path / "api"
    code = ("import json, sys, distopt\n"
            "r = distopt.search(sys.argv[1], sys.argv[2], overrides=['search.num_trials=2',"
            " 'search.max_concurrent=1'])\n"
            "print(json.dumps({'front': len(r.front), 'rows': r.trials.num_rows,"
            " 'models': [str(m) for m in r.models], 'report': str(r.report),"
            " 'summary': r.summary}))\n")
    env = subprocess_env()
    p = subprocess.run([sys.executable, "-c", code, str(CONFIGS / "smoke.yaml"), str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["rows"] >= 2 and result["front"] >= 1
    assert result["summary"]["front"] == result["front"]
    assert all(os.path.isfile(m) and m.endswith(".dopt") for m in result["models"])
    assert os.path.isfile(result["report"])
    assert distopt.load(result["models"][0]) is not None
