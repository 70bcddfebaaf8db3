"""Custom Ray metrics, exported through each node's Prometheus endpoint and the dashboard.

Per trial (tags ``experiment``, ``trial``): epoch, validation accuracy and artifact size, set by
rank 0 of the trial's Ray Train workers at every report. Per experiment (tag ``experiment``):
trials finished and failed, the current hypervolume and the size of the front, set by the
driver. Prometheus sees each with Ray's ``ray_`` prefix, e.g. ``ray_distopt_trial_val_accuracy``.

Gauges rather than counters: a resumed search sets the totals again instead of counting twice.
Outside a Ray process (``fit_local``, tests of the loop) recording is a no-op.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Mapping

from distopt import metrics as M

__all__ = ["TRIAL_METRICS", "EXPERIMENT_METRICS", "record_trial", "record_experiment"]

# Metric name -> (description, the report key it mirrors); names are defined here once.
TRIAL_METRICS: dict[str, tuple[str, str]] = {
    "distopt_trial_epoch": ("last reported epoch of the trial", M.EPOCH),
    "distopt_trial_val_accuracy": ("validation accuracy (final: of the decoded artifact)",
                                   M.VAL_ACCURACY),
    "distopt_trial_size_bytes": ("artifact size in bytes (after the final report)", M.SIZE_BYTES),
}
EXPERIMENT_METRICS: dict[str, str] = {
    "distopt_trials_finished": "trials completed so far",
    "distopt_trials_failed": "trials failed so far",
    "distopt_hypervolume": "hypervolume of the current front (as in the report)",
    "distopt_front_size": "models on the current Pareto front",
}


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


@lru_cache(maxsize=None)
def _gauge(name: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    from ray.util.metrics import Gauge

    return Gauge(name, description=description, tag_keys=tag_keys)


def record_trial(experiment: str, trial: str, report: Mapping[str, Any]) -> None:
    """Set the trial gauges from one report (values that are not yet known are skipped)."""
    if not _ray_ready():
        return
    tags = {"experiment": experiment, "trial": trial}
    for name, (description, key) in TRIAL_METRICS.items():
        value = report.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            _gauge(name, description, ("experiment", "trial")).set(float(value), tags=tags)


def record_experiment(experiment: str, finished: int, failed: int, hypervolume: float,
                      front_size: int) -> None:
    """Set the experiment gauges (called by the driver whenever a trial ends)."""
    if not _ray_ready():
        return
    values = {"distopt_trials_finished": finished, "distopt_trials_failed": failed,
              "distopt_hypervolume": hypervolume, "distopt_front_size": front_size}
    for name, value in values.items():
        if math.isfinite(value):
            _gauge(name, EXPERIMENT_METRICS[name], ("experiment",)).set(
                float(value), tags={"experiment": experiment})
