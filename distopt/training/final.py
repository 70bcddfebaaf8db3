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
from distopt.training.distributed import WorkerEnv, broadcast_object
from distopt.training.evaluation import evaluate, quality_metrics

if TYPE_CHECKING:
    from distopt.training.run import TrainingRun

__all__ = ["final_metrics"]


def _ort_latency_ms(run: TrainingRun, artifact: bytes) -> float:
    """Batch-1 latency of the artifact exported to ONNX, on ONNX Runtime (one thread):
    measured only when it is an objective (the export takes a few milliseconds)."""
    return measure_ort_latency_ms(to_onnx(decode(artifact)), example_feed(run.spec))

def _measured(run: TrainingRun, artifact: bytes, evaluate_test: bool) -> dict[str, Any]:
    """What is measured on the decoded file, on the CPU in fp32 as `distopt evaluate` does
    (whole splits, no TF32, no autocast); an integer model's accuracies are its integer
    reference's. Latency is the decoded PyTorch model's (float kernels) for every file."""
    splits, norm = run.splits, run.norm
    file = decode(artifact)
    decoded = file.reference  # an integer model's integer reference, else the decoded model
    cpu = WorkerEnv()
    out: dict[str, Any] = {**size_report(file.model, artifact), **device_report(file)}
    out.update(quality_metrics(evaluate(decoded, splits.x_val, splits.y_val, norm, cpu, 512)))
    out[M.LATENCY_MS] = measure_latency_ms(copy.deepcopy(file.model), run.spec)
    if any(name == M.ORT_LATENCY_MS for name, _ in run.cfg.search.objectives):
        out[M.ORT_LATENCY_MS] = _ort_latency_ms(run, artifact)
    out[M.TRAIN_ACCURACY] = evaluate(decoded, run.x_probe, run.y_probe, norm, cpu, 512,
                                     auc=False).accuracy
    out[M.GAP] = out[M.TRAIN_ACCURACY] - out[M.VAL_ACCURACY]
    out[M.VAL_SAMPLES] = len(splits.y_val)
    if evaluate_test and len(splits.x_test):
        test = evaluate(decoded, splits.x_test, splits.y_test, norm, cpu, 512)
        out[M.TEST_ACCURACY] = test.accuracy
        if not math.isnan(test.auc):
            out[M.TEST_AUC], out[M.TEST_LOGLOSS] = test.auc, test.loss
    return out


def final_metrics(run: TrainingRun, artifact: bytes, evaluate_test: bool) -> dict[str, Any]:
    """Metrics of the model decoded from ``artifact`` (never of the in-memory model): rank 0
    measures them (every rank holds the same file) and the others receive its numbers, so a
    run of 8 ranks evaluates once, not 8 times."""
    env = run.env
    final = dict(run.last)
    final.update(broadcast_object(_measured(run, artifact, evaluate_test)
                                  if env.rank == 0 else None, env))
    t = run.cfg.train
    final[M.PHASE] = "final"
    final[M.PRECISION] = run.precision
    final[M.TF32] = bool(t.tf32 and env.device.type == "cuda")
    final[M.TRAIN_SECONDS] = time.perf_counter() - run.t_start
    final[M.DENSE_EPOCHS] = run.dense_epochs
    final[M.EARLY_STOPPED] = run.dense_epochs < t.epochs
    final[M.DENSE_FROM] = run.dense_source
    final[M.RESUMED_FROM] = run.resumed_from
    final["started_at"] = run.started_at  # wall clock: callers measure start-up overhead
    final["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return final
