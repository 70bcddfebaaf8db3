"""The multi-objective search: Ray Tune + OptunaSearch; each trial trains in its own actor or
as a Ray Train job.

Data flow: config -> Optuna distributions -> ``Tuner`` -> :func:`distopt_trial`, a Tune function
trial that either trains itself (one CPU worker: it holds the worker's CPUs, and reports each
epoch with ``ray.tune.report``), or holds 0 CPUs and runs a ``TorchTrainer`` whose workers hold
the CPUs/GPUs (reports reach Tune through ``TuneReportCallback``) -> Tune -> Optuna (told the
*last* result: the decoded artifact's metrics).

Resume: the Tune experiment (with the searcher's state and the epoch checkpoints of trials that
train in their actor) lives in ``<output>/tune``, the Optuna study in ``<output>/study.db`` and
every Ray Train trial's run in ``<output>/train/<trial id>``; a restored trial re-runs
:func:`distopt_trial`, which resumes from Tune's checkpoint, or whose ``TorchTrainer`` of the
same name resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from distopt.config import Config, ConfigError, storage_url
from distopt import metrics as M
from distopt.constraints import SPEC_METRICS, bounds, over_budget
from distopt.storage import Location
from distopt.config.space import to_optuna
from distopt.orchestration.capacity import concurrency
from distopt.orchestration.samplers import make_sampler
from distopt.orchestration.run import (ignore_exit_in_finalizers, make_trainer,
                                      train_in_trial_actor, trains_in_actor)
from distopt.orchestration.trial_params import sampler_name, unwrap_params
from distopt.results.paths import SearchPaths
from distopt.training.budget import spec_costs

log = logging.getLogger(__name__)

__all__ = ["budget_text", "distopt_trial", "finished_trials", "make_sampler", "make_scheduler",
           "run_search", "trainable", "trial_max_failures", "trial_resources"]

TRIAL_MEMORY_BYTES = 100 * 1024**2  # the trial function itself: a Ray Train controller, 0 CPUs


def _trial_cfg(params: dict[str, Any], base: dict[str, Any]) -> Config:
    return Config.from_dict(base).trial_config().with_overrides(params)


def distopt_trial(params: dict[str, Any], base: dict[str, Any], train_storage: str,
                  dense_store: str | None = None) -> None:
    """One Tune trial: apply the sampled values, then train in this trial actor (one CPU
    worker) or as a Ray Train job (several workers, GPUs): :func:`~distopt.orchestration.run.trains_in_actor`.
    ``dense_store``: where trials keep dense models for each other (``search.reuse_dense``).

    A config the sampled values make invalid raises here, and fails this trial alone. (The
    function's name is what the dashboard shows for every trial actor.)"""
    ignore_exit_in_finalizers()  # Ray ends every finished trial actor with SIGTERM
    cfg = _trial_cfg(unwrap_params(params), base)
    if _answered_over_budget(cfg):
        return
    if trains_in_actor(cfg):
        train_in_trial_actor(cfg, dense_store)
        return

    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # Ray Train V2 runs are listed in the dashboard only if the process that starts them has
    # this set; a trial actor does not inherit the driver's environment.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    # The trial id names the Train run: a restored trial resumes its own checkpoints.
    trainer = make_trainer(cfg, train_storage, ray.tune.get_context().get_trial_id(),
                           evaluate_test=False, log_epochs=False,
                           callbacks=[TuneReportCallback()], children=True,
                           dense_store=dense_store)
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _answered_over_budget(cfg: Config) -> bool:
    """A configuration whose architecture alone breaks a flash, RAM or MACs budget
    (``search.constraints``) is not trained: its final result is reported at once, with the
    costs of the file it would export and accuracy at chance (no model), so the sampler
    learns the values are infeasible and the results say why."""
    budget = [b for b in bounds(cfg.search.constraints) if b.metric in SPEC_METRICS]
    if not budget:
        return False
    costs = spec_costs(cfg)
    reason = over_budget(costs, budget)
    if not reason:
        return False
    import ray.tune

    ray.tune.report({**{k: math.nan for k in M.ALWAYS_REPORTED}, **costs, M.EPOCH: -1,
                     M.PHASE: "final", M.VAL_ACCURACY: 1.0 / cfg.data.num_classes,
                     M.OVER_BUDGET: reason})
    return True


def trial_resources(params: dict[str, Any], base: dict[str, Any]) -> Any:
    """What a trial holds: its one worker's CPUs when it trains in its own actor; when it
    drives a Ray Train job, nothing but a little memory (0 CPUs: the job's workers hold them,
    and a trial holding 1 CPU plus workers holding the rest never starts on a 2-CPU machine)."""
    from ray.tune import PlacementGroupFactory

    try:
        cfg = _trial_cfg(unwrap_params(params), base)
    except ConfigError:  # the trial fails on its own, with this error, as soon as it starts
        cfg = Config.from_dict(base).trial_config()
    if trains_in_actor(cfg):
        return PlacementGroupFactory([{"CPU": cfg.train.cpus_per_worker}])
    return PlacementGroupFactory([{"CPU": 0, "memory": TRIAL_MEMORY_BYTES}])


def make_scheduler(cfg: Config) -> Any:
    """The trial scheduler named by ``search.scheduler``."""
    if cfg.search.scheduler == "mo_asha":
        from distopt.orchestration.scheduler import MultiObjectiveASHA

        return MultiObjectiveASHA.from_config(cfg)
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _searcher(cfg: Config, paths: SearchPaths) -> Any:
    import optuna

    from distopt.orchestration._optuna_search import ResumableOptunaSearch as OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url(cfg) or paths.study_url)
    return OptunaSearch(
        space={sampler_name(k): d for k, d in to_optuna(Config, cfg.search.space).items()},
        metric=[name for name, _ in cfg.search.objectives],
        mode=[direction for _, direction in cfg.search.objectives],
        sampler=make_sampler(cfg), storage=storage, study_name=cfg.name,
        deadline=time.time() + cfg.search.time_budget_s if cfg.search.time_budget_s else None,
        constraints=bounds(cfg.search.constraints),
    )


def trainable(cfg: Config, paths: SearchPaths) -> Any:
    import ray.tune

    # Trials never open the study: they get the config without its storage credentials.
    base = cfg.public_dict()
    fn = ray.tune.with_parameters(distopt_trial, base=base, train_storage=paths.train,
                                  dense_store=paths.dense if cfg.search.reuse_dense else None)
    return ray.tune.with_resources(fn, functools.partial(trial_resources, base=base))


def trial_max_failures(cfg: Config) -> int:
    """Tune's restarts of a failed trial: ``train.max_failures`` for trials that train in their
    own actor; none for Ray Train jobs, which restart their worker group themselves."""
    trial = cfg.trial_config()
    return trial.train.max_failures if trains_in_actor(trial) else 0


def run_search(cfg: Config, output: Location | Path, resume: bool = False) -> Any:
    """Run (or resume) the search at ``output`` (a local directory or a remote location) and
    return Tune's ``ResultGrid``."""
    output = output if isinstance(output, Location) else Location(str(output))
    import ray.tune

    from distopt.orchestration.progress import ExperimentGauges, ProgressTable, StudyUploader, TrialClock

    # Save Tune's experiment state often: a killed driver then loses at most a few seconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    paths = SearchPaths(output)
    output.local.mkdir(parents=True, exist_ok=True)
    from distopt.orchestration.teacher import ensure_teacher

    cfg = ensure_teacher(cfg, output, paths.train)  # once per search, before any trial
    run_config = ray.tune.RunConfig(
        name="tune", storage_path=output.uri(), verbose=0,
        callbacks=[ProgressTable(cfg), ExperimentGauges(cfg), TrialClock(output.local)] + (
            [StudyUploader(output)] if output.remote and not cfg.search.storage else []),
        # A failing trial fails alone (after its restarts from its last epoch checkpoint).
        failure_config=ray.tune.FailureConfig(max_failures=trial_max_failures(cfg)),
        # Every checkpoint is kept while the search runs, pruned to each trial's last after
        # it. With num_to_keep, Tune deletes a trial's older checkpoints as soon as it has
        # newer ones, while the experiment state at a remote location may still name an older
        # one (its upload lags): a driver killed then leaves a trial that cannot be restored
        # ("does not exist on storage anymore"), and --resume fails it.
        checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=None),
    )
    if resume and not ray.tune.Tuner.can_restore(paths.tune):
        # Stopped before Tune saved anything (an interrupt while Ray started): nothing ran, so
        # resuming is starting it.
        log.info("%s: no Tune experiment saved yet (the search stopped before its first "
                 "trial): starting it", paths.tune)
        resume = False
    if resume:
        tuner = ray.tune.Tuner.restore(paths.tune, trainable=trainable(cfg, paths),
                                       resume_unfinished=True, resume_errored=False)
    else:
        max_conc, why = concurrency(cfg)
        log.info("search %s: %s, sampler %s, up to %d at once (%s), objectives %s",
                 cfg.name, budget_text(cfg), cfg.search.sampler, max_conc, why,
                 ", ".join(f"{n} ({d})" for n, d in cfg.search.objectives))
        tuner = ray.tune.Tuner(
            trainable(cfg, paths),
            tune_config=ray.tune.TuneConfig(search_alg=_searcher(cfg, paths),
                                            scheduler=make_scheduler(cfg),
                                            num_samples=cfg.search.num_trials or -1,
                                            max_concurrent_trials=max_conc,
                                            reuse_actors=True),
            run_config=run_config,
        )
    t0 = time.perf_counter()
    grid = tuner.fit()
    log.info("search finished in %.0f s", time.perf_counter() - t0)
    _close_orphans(cfg, paths)
    keep_last_checkpoints(grid)
    return grid


def keep_last_checkpoints(grid: Any) -> int:
    """Delete every trial's checkpoints but its last (which holds its artifact, and its
    children's): once the search has ended no trial resumes from an older one. Returns how
    many were deleted."""
    import pyarrow.fs as pafs

    deleted = 0
    for result in grid:
        if result.checkpoint is None or not result.path:
            continue
        fs, keep = result.filesystem, result.checkpoint.path.rstrip("/")
        for info in fs.get_file_info(pafs.FileSelector(result.path, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(
                    "checkpoint_") and info.path.rstrip("/") != keep:
                fs.delete_dir(info.path)
                deleted += 1
    log.debug("deleted %d superseded trial checkpoints", deleted)
    return deleted


def budget_text(cfg: Config) -> str:
    """``16 trials``, ``180 s`` or ``16 trials or 180 s``."""
    s = cfg.search
    parts = ([f"{s.num_trials} trials"] if s.num_trials else []) + \
        ([f"{s.time_budget_s:g} s"] if s.time_budget_s else [])
    return " or ".join(parts)


def finished_trials(cfg: Config, output: Location) -> int:
    """Trials of the search's study that completed (0 if it has none yet)."""
    import optuna

    try:
        study = optuna.load_study(study_name=cfg.name,
                                  storage=storage_url(cfg) or SearchPaths(output).study_url)
    except KeyError:  # no study of that name yet
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _close_orphans(cfg: Config, paths: SearchPaths) -> None:
    """Mark Optuna trials still RUNNING as FAIL once every Tune trial has ended.

    Only a driver killed between Optuna's ``ask`` and Tune's next experiment checkpoint leaves
    such a trial: Tune re-creates it on resume under a new Optuna trial, so the old one is dead."""
    import optuna

    study = optuna.load_study(study_name=cfg.name, storage=storage_url(cfg) or paths.study_url)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        log.warning("optuna trial %d was left RUNNING by an interrupted run: marked FAIL",
                    t.number)


