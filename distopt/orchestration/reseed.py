"""Noise-aware front (``search.reseed``): after the search, every front configuration is
trained again with more seeds, and its decoded test accuracy reported as mean and standard
deviation over all of its runs, so that a front point whose advantage over its smaller
neighbour is within seed noise is marked as such.

One training run of an MNIST model moves by a few tenths of a point with its seed; a front
read from single runs mixes real trade-offs with that noise. The retrainings are one more Ray
Tune run (``reseed/`` beside ``tune/``) of the same trainable, a grid over (front model, seed),
without children or early stopping.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from typing import Any, Sequence

from distopt import metrics as M
from distopt.config import Config
from distopt.data import load_splits
from distopt.orchestration.trial_params import RESEED_KEY
from distopt.orchestration.tuning import trainable, trial_max_failures
from distopt.results.paths import SearchPaths
from distopt.results.trials import SEEDS, TEST_MEAN, TEST_SD, WITHIN_NOISE
from distopt.storage import Location
from distopt.training import evaluate_artifact

log = logging.getLogger(__name__)

__all__ = ["noise_marks", "reseed_front"]


def noise_marks(points: Sequence[tuple[float, float, float]]) -> list[bool]:
    """For front points ``(bytes, mean accuracy, sd)`` in order of size: whether each one's
    advantage over the next smaller point is within seed noise, i.e. at most
    ``sqrt(sd^2 + sd_smaller^2)`` (the spread of the difference of two single runs). The
    smallest point has no smaller neighbour and is never marked."""
    marks = [False] * len(points)
    order = sorted(range(len(points)), key=lambda i: points[i][0])
    for prev, cur in zip(order, order[1:]):
        _, m0, s0 = points[prev]
        _, m1, s1 = points[cur]
        marks[cur] = m1 - m0 <= math.hypot(s0, s1)
    return marks


def reseed_front(cfg: Config, output: Location, rows: list[dict[str, Any]],
                 max_concurrent: int) -> list[dict[str, Any]]:
    """Retrain each front configuration of ``rows`` with ``search.reseed - 1`` more seeds
    (``train.seed + 1``, ...), evaluate each decoded file on the test set, and add the mean,
    standard deviation, run count and within-noise mark to the front's rows (the search's own
    run is the first seed). Retrainings that fail are left out and logged."""
    import ray.tune

    front = [r for r in rows if r["pareto"]]
    if cfg.search.reseed < 2 or not front:
        return rows
    plain = cfg.with_overrides({"search.children": 0, "search.scheduler": "fifo"})
    first = plain.trial_config().train.seed
    jobs = [{"trial_id": r["trial_id"],
             "params": {**json.loads(r["params_json"]), "train.seed": first + k}}
            for r in front for k in range(1, cfg.search.reseed)]
    log.info("noise-aware front: training the %d front configurations with %d more seed(s) "
             "each (search.reseed %d)", len(front), cfg.search.reseed - 1, cfg.search.reseed)
    tuner = ray.tune.Tuner(
        trainable(plain, SearchPaths(output)),
        param_space={RESEED_KEY: ray.tune.grid_search(jobs)},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=max_concurrent,
                                        reuse_actors=True),
        run_config=ray.tune.RunConfig(
            name="reseed", storage_path=output.uri(), verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=trial_max_failures(plain)),
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1)))
    splits = load_splits(cfg.data)
    accuracies = {r["trial_id"]: [r[M.TEST_ACCURACY]] for r in front}
    for result in tuner.fit():
        job, m = result.config[RESEED_KEY], result.metrics or {}
        if result.error is not None or m.get(M.PHASE) != "final":
            log.warning("retraining of %s with train.seed %s failed: %s", job["trial_id"],
                        job["params"]["train.seed"], result.error)
            continue
        path = m.get("checkpoint_path") or result.checkpoint.path
        data = output.read_bytes(path.removeprefix("file://").rstrip("/") + "/" +
                                 M.ARTIFACT_FILE)
        accuracies[job["trial_id"]].append(
            evaluate_artifact(data, splits, "test")[M.TEST_ACCURACY])
    stats = {tid: (statistics.mean(a), statistics.stdev(a) if len(a) > 1 else math.nan, len(a))
             for tid, a in accuracies.items()}
    marks = noise_marks([(r[M.SIZE_BYTES], stats[r["trial_id"]][0],
                          stats[r["trial_id"]][1]) for r in front])
    for r, mark in zip(front, marks):
        r[TEST_MEAN], r[TEST_SD], r[SEEDS] = stats[r["trial_id"]]
        r[WITHIN_NOISE] = mark
    for r in rows:
        if not r["pareto"]:
            r[TEST_MEAN], r[TEST_SD], r[SEEDS], r[WITHIN_NOISE] = math.nan, math.nan, 0, False
    return rows
