"""A run's final metrics: those of the model decoded from its artifact (never of the model in
memory), the only ones a run reports at the end."""

from __future__ import annotations

import copy
import math
import resource
import time
from typing import TYPE_CHECKING, Any

from distopt import metrics as M
from distopt.compress import decode, device_report, size_report
from distopt.export import to_onnx
from distopt.runtime import example_feed, measure_latency_ms, measure_ort_latency_ms
from distopt.training.distributed import WorkerEnv, broadcast_float
from distopt.training.evaluation import evaluate

if TYPE_CHECKING:
    from distopt.training.run import TrainingRun

__all__ = ["final_metrics"]


def _ort_latency_ms(run: TrainingRun, artifact: bytes) -> float:
    """Batch-1 latency of the artifact exported to ONNX, on ONNX Runtime (one thread):
    measured only when it is an objective (the export takes a few milliseconds)."""
    return measure_ort_latency_ms(to_onnx(decode(artifact)), example_feed(run.spec))

def final_metrics(run: TrainingRun, artifact: bytes, evaluate_test: bool) -> dict[str, Any]:
    """Metrics of the model decoded from ``artifact`` (never of the in-memory model), on
    the CPU in fp32 as `distopt evaluate` measures them: each rank evaluates whole splits
    itself (no TF32, no autocast, no cross-rank sums), so every rank holds the same
    numbers."""
    splits, norm, env = run.splits, run.norm, run.env
    file = decode(artifact)
    decoded = file.model
    cpu = WorkerEnv()
    final = dict(run.last)
    final.update(size_report(decoded, artifact))
    final.update(device_report(file))
    final[M.VAL_LOSS], final[M.VAL_ACCURACY] = evaluate(decoded, splits.x_val, splits.y_val,
                                                        norm, cpu, 512)
    final[M.LATENCY_MS] = measure_latency_ms(copy.deepcopy(decoded), run.spec) \
        if env.rank == 0 else math.nan
    final[M.LATENCY_MS] = broadcast_float(final[M.LATENCY_MS], env)
    if any(name == M.ORT_LATENCY_MS for name, _ in run.cfg.search.objectives):
        final[M.ORT_LATENCY_MS] = broadcast_float(
            _ort_latency_ms(run, artifact) if env.rank == 0 else math.nan, env)
    _, final[M.TRAIN_ACCURACY] = evaluate(decoded, run.x_probe, run.y_probe, norm, cpu, 512)
    final[M.GAP] = final[M.TRAIN_ACCURACY] - final[M.VAL_ACCURACY]
    final[M.VAL_SAMPLES] = len(splits.y_val)
    if evaluate_test and len(splits.x_test):
        _, final[M.TEST_ACCURACY] = evaluate(decoded, splits.x_test, splits.y_test, norm,
                                             cpu, 512)
    t = run.cfg.train
    final[M.PHASE] = "final"
    final[M.PRECISION] = run.precision
    final[M.TF32] = bool(t.tf32 and env.device.type == "cuda")
    final[M.TRAIN_SECONDS] = time.perf_counter() - run.t_start
    final[M.DENSE_EPOCHS] = run.dense_epochs
    final[M.EARLY_STOPPED] = run.dense_epochs < t.epochs
    final[M.DENSE_FROM] = run.dense_source
    final["started_at"] = run.started_at  # wall clock: callers measure start-up overhead
    final["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return final
