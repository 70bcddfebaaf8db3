"""The benchmark scripts run (their numbers live in benchmarks/, never in tests)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from conftest import ROOT


def test_gpu_script_skips_cleanly_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the gpu-marked test runs the real benchmark")
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "no CUDA device" in p.stdout and "skipping" in p.stdout
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert "no CUDA device" in data["skipped"] and data["machine"]["cuda"] is False


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_script_on_a_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert {r["precision"] for r in data["step"]} >= {"fp32", "tf32", "fp16"}
    assert {r["batch"] for r in data["step"]} == {512, 4096, 16384}
    assert [r["data"] for r in data["fit"]["runs"]] == ["on the device", "copied per step"]
    assert data["artifact"][0]["where"] == "CPU fp32 (reported)"
    assert data["total_s"] < 300


def _run_all():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run_all

    return run_all


def test_committed_benchmark_page_is_rendered_from_the_committed_results(tmp_path):
    """BENCHMARKS.md says what the JSON files say: edited by hand or left stale, this fails."""
    run_all = _run_all()
    assert run_all.render(tmp_path / "page.md").read_text() == run_all.PAGE.read_text()


def test_benchmark_page_shows_each_results_numbers_and_names_missing_ones(tmp_path, monkeypatch):
    run_all = _run_all()
    machine = {"cpu": "TestCPU", "cores": 2, "python": "3.11", "torch": "t", "ray": "r",
               "date": "2026-01-01"}
    (tmp_path / "default_search.json").write_text(json.dumps({
        "machine": machine, "command": "python distopt/search.py --config X", "wall_s": 171.4,
        "trials": 37, "failed": 2, "front": [{"bytes": 1234.0}, {"bytes": 98765.0}]}))
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    text = run_all.render(tmp_path / "page.md").read_text()
    section = text.split("## The default search", 1)[1].split("## GPU", 1)[0]
    assert "**171 s** wall (Ray start-up and the report included), 37 trials (2 failed), a " \
        "front of 2 from 1,234 B to 98,765 B (80x)" in section
    for name, command in (("headline", "headline.py"), ("throughput", "throughput.py"),
                          ("search_efficiency", "search_efficiency.py")):
        assert f"`results/{name}.json`" in text and command in text
