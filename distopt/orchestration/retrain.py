"""Configurations trained again after a search, as one more Ray Tune run of the search's own
trainable: a grid over jobs (a trial id and the config values to train), run in parallel on the
cluster like trials, without children or early stopping. What the final stage
(:mod:`distopt.orchestration.final_stage`) and the early-stopping benchmark use.

The run is resumable: a run of the same name whose saved grid holds the same jobs is restored,
and only its unfinished jobs train (an interrupted final stage goes on where it stopped; a
finished one is read back without training anything)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from distopt import metrics as M
from distopt.config import Config
from distopt.orchestration.collect import checkpoint_path, read_artifact
from distopt.orchestration.trial_params import RETRAIN_KEY
from distopt.orchestration.tuning import trainable, trial_max_failures
from distopt.results.paths import SearchPaths
from distopt.storage import Location

log = logging.getLogger(__name__)

__all__ = ["Retrained", "retrain"]

_JOBS_FILE = "jobs.json"  # beside Tune's experiment state: the grid the run was started with


@dataclass
class Retrained:
    """One job's outcome: its final metrics and decoded file (``None`` where it failed)."""

    job: dict[str, Any]
    metrics: dict[str, Any] | None
    artifact: bytes | None


def retrain(cfg: Config, output: Location, jobs: Sequence[dict[str, Any]], name: str,
            max_concurrent: int) -> list[Retrained]:
    """Train each job (``{"trial_id": ..., "params": {config key: value}}``; params apply over
    the trials' config, ``train.seed`` and ``train.epochs`` included) as a trial of a Tune run
    ``name`` beside the search's ``tune/``, in job order. Failed jobs come back without metrics
    and are logged."""
    import ray.tune

    plain = cfg.with_overrides({"search.children": 0, "search.scheduler": "fifo"})
    path = output.uri(name)
    jobs = [dict(j) for j in jobs]
    fn = trainable(plain, SearchPaths(output))
    if _saved_jobs(output, name) == jobs and ray.tune.Tuner.can_restore(path):
        log.info("%s: resuming (%d jobs)", name, len(jobs))
        tuner = ray.tune.Tuner.restore(path, trainable=fn, resume_unfinished=True,
                                       restart_errored=True)
    else:
        tuner = ray.tune.Tuner(
            fn, param_space={RETRAIN_KEY: ray.tune.grid_search(jobs)},
            tune_config=ray.tune.TuneConfig(max_concurrent_trials=max_concurrent,
                                            reuse_actors=True),
            run_config=ray.tune.RunConfig(
                name=name, storage_path=output.uri(), verbose=0,
                failure_config=ray.tune.FailureConfig(max_failures=trial_max_failures(plain)),
                checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1)))
        output.write_bytes(f"{name}/{_JOBS_FILE}", json.dumps(jobs, sort_keys=True).encode())
    done: dict[str, Retrained] = {}
    for result in tuner.fit():
        job, m = result.config[RETRAIN_KEY], result.metrics or {}
        key = json.dumps(job, sort_keys=True)
        if result.error is not None or m.get(M.PHASE) != "final":
            log.warning("retraining of %s with %s failed: %s", job["trial_id"],
                        json.dumps(job["params"], sort_keys=True), result.error)
            done[key] = Retrained(job, None, None)
            continue
        done[key] = Retrained(job, m, read_artifact(output, checkpoint_path(result)))
    return [done.get(json.dumps(j, sort_keys=True), Retrained(j, None, None)) for j in jobs]


def _saved_jobs(output: Location, name: str) -> list[dict[str, Any]] | None:
    try:
        return json.loads(output.read_rel(f"{name}/{_JOBS_FILE}"))
    except (OSError, ValueError):
        return None
