"""Monitoring on a real `ray start --head` cluster: the search as a named Ray job, its metrics
on the Prometheus endpoint, its Train runs and trial actors in the dashboard, token auth."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from distopt.orchestration.telemetry import EXPERIMENT_METRICS, TRIAL_METRICS, record_experiment, record_trial

from _raytools import free_port, http_get, listening_addresses, new_token, ray_processes, wait_for
from conftest import CONFIGS, ROOT

SMOKE = CONFIGS / "smoke.yaml"


def test_recording_sets_gauges_only_inside_ray_and_skips_unknown_values(monkeypatch):
    from distopt.orchestration import telemetry

    calls: list[tuple[str, float, dict]] = []

    class FakeGauge:  # records what a Ray Gauge would export
        def __init__(self, name: str) -> None:
            self.name = name

        def set(self, value: float, tags: dict) -> None:
            calls.append((self.name, value, tags))

    monkeypatch.setattr(telemetry, "_gauge", lambda name, *a: FakeGauge(name))
    report = {"epoch": 3, "val_accuracy": 0.5, "size_bytes": float("nan")}
    monkeypatch.setattr(telemetry, "_ray_ready", lambda: False)
    record_trial("x", "t", report)
    record_experiment("x", 1, 0, 0.5, 1)
    assert calls == []  # outside a Ray process: nothing is recorded
    monkeypatch.setattr(telemetry, "_ray_ready", lambda: True)
    record_trial("x", "t", report)
    tags = {"experiment": "x", "trial": "t"}
    assert calls == [("distopt_trial_epoch", 3.0, tags),
                     ("distopt_trial_val_accuracy", 0.5, tags)]  # NaN size: not known yet
    calls.clear()
    record_experiment("x", 4, 1, float("nan"), 2)
    assert calls == [("distopt_trials_finished", 4.0, {"experiment": "x"}),
                     ("distopt_trials_failed", 1.0, {"experiment": "x"}),
                     ("distopt_front_size", 2.0, {"experiment": "x"})]


def test_recording_is_a_no_op_in_a_process_without_ray():
    """A fresh process (this one may have had Ray started by another test): recording outside
    Ray neither fails nor starts Ray."""
    code = ("from distopt.orchestration.telemetry import record_trial, _ray_ready\n"
            "assert not _ray_ready()\n"
            "record_trial('x', 't', {'epoch': 1, 'val_accuracy': 0.5})\n"
            "import ray\n"
            "assert not ray.is_initialized()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


@dataclass(frozen=True)
class Head:
    gcs: str  # host:port for RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:port
    metrics: str  # http://127.0.0.1:port/metrics
    dashboard_port: int
    token: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """`ray start --head --block` with token auth, in its own process group and temp dir, so
    that stopping it never touches other Ray instances (no `ray stop`)."""
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH")
    # A short path: Ray's Unix sockets live under the temp dir (107-byte limit).
    tmp = Path(tempfile.mkdtemp(prefix="dhead", dir="/tmp"))
    token = new_token(tmp / "token")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp / "token"))
    gcs, dash, metrics = free_port(), free_port(), free_port()
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--metrics-export-port={metrics}", "--num-cpus=2",
         "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={tmp / 'ray'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        if not wait_for(lambda: http_get(f"{url}/api/version", token)[0] == 200, 90):
            pytest.fail(f"head did not come up: {(tmp / 'head.log').read_text()[-3000:]}")
        yield Head(f"127.0.0.1:{gcs}", url, f"http://127.0.0.1:{metrics}/metrics", dash, token,
                   env)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        left = ray_processes(str(tmp))
        for line in left:  # never leave daemons of this head behind
            os.kill(int(line.split()[0]), signal.SIGKILL)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _metric_lines(text: str, name: str, experiment: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(f"ray_{name}{{")
            and f'experiment="{experiment}"' in ln]


@pytest.mark.slow
@pytest.mark.integration
def test_job_submit_runs_the_search_as_a_named_job_with_metrics(head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "out"
    job_id = f"distopt-smoke-{int(time.time())}"
    p = subprocess.run(
        ["ray", "job", "submit", "--address", head.dashboard, "--submission-id", job_id,
         "--working-dir", str(ROOT), "--", "python", "distopt/search.py", "--config",
         "configs/smoke.yaml", "--output", str(out),
         "train.executor=ray_train"],  # Ray Train jobs, so that the dashboard lists runs
        env=head.env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    # The jobs API, with the token (and without it: refused).
    client = JobSubmissionClient(head.dashboard,
                                 headers={"Authorization": f"Bearer {head.token}"})
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    assert "distopt/search.py" in client.get_job_info(job_id).entrypoint
    assert http_get(f"{head.dashboard}/api/jobs/")[0] == 401
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 4 and all(t["status"] == "COMPLETE" for t in trials)

    # Custom metrics on the Prometheus endpoint: per experiment and per trial.
    def found() -> dict[str, list[str]]:
        _, text = http_get(head.metrics)
        names = [*EXPERIMENT_METRICS, *TRIAL_METRICS]
        return {n: _metric_lines(text, n, "smoke") for n in names}

    assert wait_for(lambda: all(found().values()), 45, 3), found()
    lines = found()
    assert lines["distopt_trials_finished"][0].endswith(" 4.0")
    assert lines["distopt_trials_failed"][0].endswith(" 0.0")
    front = sum(t["pareto"] for t in trials)
    assert lines["distopt_front_size"][0].endswith(f" {float(front)}")
    assert any(f'trial="{t["trial_id"]}"' in ln for t in trials
               for ln in lines["distopt_trial_val_accuracy"])

    # The dashboard lists the Train runs (one per trial, named by trial id) and names the
    # trial actors after distopt's trial function.
    status, body = http_get(f"{head.dashboard}/api/train/v2/runs/v1", head.token)
    assert status == 200, body
    runs = {r["name"] for r in json.loads(body)["train_runs"]}
    assert {t["trial_id"] for t in trials} <= runs
    status, body = http_get(f"{head.dashboard}/api/v0/actors?detail=1&limit=1000", head.token)
    actors = json.loads(body)["data"]["result"]["result"]
    assert any(a["class_name"] == "ImplicitFunc" and a.get("repr_name") == "distopt_trial"
               for a in actors)

    # Nothing distopt configures listens beyond loopback: the dashboard is on 127.0.0.1 only.
    assert listening_addresses(head.dashboard_port) == {"127.0.0.1"}


@pytest.mark.slow
@pytest.mark.integration
def test_search_joins_the_cluster_named_by_ray_address(head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    out = tmp_path / "joined"
    env = {**head.env, "RAY_ADDRESS": head.gcs}
    p = subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), "--config",
                        str(SMOKE), "--output", str(out), "search.num_trials=2"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert len(pq.read_table(out / "trials.parquet")) == 2
    # The driver ran as a job of this cluster, not of a private local instance.
    client = JobSubmissionClient(head.dashboard,
                                 headers={"Authorization": f"Bearer {head.token}"})
    assert any(str(out) in (j.entrypoint or "") for j in client.list_jobs())


def test_optuna_dashboard_serves_the_experiment_study(tmp_path):
    """The README's `optuna-dashboard sqlite:///<output>/study.db` (the `dashboard` extra)."""
    import optuna

    exe = shutil.which("optuna-dashboard")
    if exe is None:
        pytest.skip("optuna-dashboard is not installed (pip install 'distopt[dashboard]')")
    study = optuna.create_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'study.db'}",
                                directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1000.0]))
    port = free_port()
    proc = subprocess.Popen([exe, f"sqlite:///{tmp_path / 'study.db'}", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        assert wait_for(lambda: http_get(url)[0] == 200, 30, 0.5)
        assert '"study_name": "smoke"' in http_get(url)[1]
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(10)
