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


def test_benchmark_page_renders_every_section(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run_all

    text = run_all.render(tmp_path / "page.md").read_text()
    for section in ("## Headline", "## Training throughput", "## Search efficiency",
                    "## The default search", "## GPU"):
        assert section in text
