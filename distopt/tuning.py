"""The multi-objective search: Ray Tune + OptunaSearch, each trial a Ray Train job.

Data flow: config -> Optuna distributions -> ``Tuner`` -> :func:`distopt_trial` (a Tune function
trial holding 0 CPUs) -> ``TorchTrainer`` (its workers hold the CPUs/GPUs) -> per-worker
loop -> ``TuneReportCallback`` -> Tune -> Optuna (told the *last* result: the decoded artifact's
metrics).

Resume: the Tune experiment (with the searcher's state) lives in ``<output>/tune``, the Optuna
study in ``<output>/study.db`` and every trial's Ray Train run in ``<output>/train/<trial id>``;
a restored trial re-runs :func:`distopt_trial`, whose ``TorchTrainer`` of the same name resumes from
its last epoch checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distopt.config import Config, storage_url
from distopt.space import to_optuna

log = logging.getLogger(__name__)

__all__ = ["SearchPaths", "check_fits", "default_max_concurrent", "make_sampler", "run_search",
           "trainable", "distopt_trial"]

TRIAL_MEMORY_BYTES = 100 * 1024**2  # the trial function itself: a Ray Train controller, 0 CPUs


@dataclass(frozen=True)
class SearchPaths:
    root: Path

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def study_url(self) -> str:
        return f"sqlite:///{(self.root / 'study.db').resolve()}"


def make_sampler(cfg: Config) -> Any:
    """The Optuna sampler named by ``search.sampler``, seeded."""
    import optuna

    s = cfg.search
    if s.sampler == "nsga2":
        # A population far smaller than the default 50, or a 16-trial search never leaves its
        # random first generation.
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, s.num_trials // 4)),
                                             seed=s.seed)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True,
                                          n_startup_trials=max(4, s.num_trials // 4))
    return optuna.samplers.RandomSampler(seed=s.seed)


def default_max_concurrent(cfg: Config) -> int:
    """Trials that fit the cluster at once: whole worker groups by CPUs (and GPUs)."""
    import ray

    res = ray.cluster_resources()
    t = cfg.trial_config().train
    fits = int(res.get("CPU", 0) // (t.num_workers * t.cpus_per_worker))
    if t.use_gpu:
        fits = min(fits, int(res.get("GPU", 0) // t.num_workers))
    return max(1, fits)


def check_fits(cfg: Config) -> list[str]:
    """Problems with a per-trial shape that this cluster can never place (fail fast instead of
    waiting forever for a placement group). It judges the nodes alive now: a cluster that would
    autoscale up to the shape is not yet recognized."""
    import ray

    t = cfg.trial_config().train
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problems = []
    need_cpu = t.num_workers * t.cpus_per_worker
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    if need_cpu > total_cpu:
        problems.append(f"train.num_workers x train.cpus_per_worker = {need_cpu:g} CPUs per trial, "
                        f"but the cluster has {total_cpu:g}")
    if not any(n.get("CPU", 0) >= t.cpus_per_worker for n in nodes):
        problems.append(f"train.cpus_per_worker: got {t.cpus_per_worker:g}; no node has that "
                        "many CPUs")
    if t.use_gpu and sum(n.get("GPU", 0) for n in nodes) < t.num_workers:
        problems.append(f"train.use_gpu with {t.num_workers} workers needs {t.num_workers} GPUs, "
                        f"but the cluster has {sum(n.get('GPU', 0) for n in nodes):g}")
    return problems


def distopt_trial(params: dict[str, Any], base: dict[str, Any], train_storage: str) -> None:
    """One Tune trial: apply the sampled values, then run the trial as a Ray Train job.

    A config the sampled values make invalid raises here, and fails this trial alone. (The
    function's name is what the dashboard shows for every trial actor.)"""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from distopt.run import make_trainer

    # Ray Train V2 runs are listed in the dashboard only if the process that starts them has
    # this set; a trial actor does not inherit the driver's environment.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    cfg = Config.from_dict(base).trial_config().with_overrides(params)
    # The trial id names the Train run: a restored trial resumes its own checkpoints.
    trainer = make_trainer(cfg, train_storage, ray.tune.get_context().get_trial_id(),
                           evaluate_test=False, log_epochs=False,
                           callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _searcher(cfg: Config, paths: SearchPaths) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url(cfg) or paths.study_url)
    return OptunaSearch(
        space=to_optuna(cfg.search.space),
        metric=[name for name, _ in cfg.search.objectives],
        mode=[direction for _, direction in cfg.search.objectives],
        sampler=make_sampler(cfg), storage=storage, study_name=cfg.name,
    )


def trainable(cfg: Config, paths: SearchPaths) -> Any:
    import ray.tune

    # Trials never open the study: they get the config without its storage credentials.
    fn = ray.tune.with_parameters(distopt_trial, base=cfg.public_dict(),
                                  train_storage=str(paths.train.resolve()))
    # 0 CPUs for the trial itself: its workers hold the CPUs. A trial holding 1 CPU plus
    # workers holding the rest never starts on a 2-CPU machine.
    return ray.tune.with_resources(fn, {"CPU": 0, "memory": TRIAL_MEMORY_BYTES})


def run_search(cfg: Config, output: Path, resume: bool = False) -> Any:
    """Run (or resume) the search and return Tune's ``ResultGrid``."""
    import ray.tune

    from distopt.progress import ExperimentGauges, ProgressTable

    # Save Tune's experiment state often: a killed driver then loses at most a few seconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    paths = SearchPaths(output.resolve())
    paths.train.mkdir(parents=True, exist_ok=True)
    run_config = ray.tune.RunConfig(
        name="tune", storage_path=str(paths.root), verbose=0,
        callbacks=[ProgressTable(cfg), ExperimentGauges(cfg)],
        failure_config=ray.tune.FailureConfig(max_failures=0),  # a failing trial fails alone
    )
    if resume:
        if not ray.tune.Tuner.can_restore(str(paths.tune)):
            raise FileNotFoundError(f"{paths.tune}: no Tune experiment to resume")
        tuner = ray.tune.Tuner.restore(str(paths.tune), trainable=trainable(cfg, paths),
                                       resume_unfinished=True, resume_errored=False)
    else:
        max_conc = cfg.search.max_concurrent or default_max_concurrent(cfg)
        log.info("search %s: %d trials, sampler %s, up to %d at once, objectives %s",
                 cfg.name, cfg.search.num_trials, cfg.search.sampler, max_conc,
                 ", ".join(f"{n} ({d})" for n, d in cfg.search.objectives))
        tuner = ray.tune.Tuner(
            trainable(cfg, paths),
            tune_config=ray.tune.TuneConfig(search_alg=_searcher(cfg, paths),
                                            num_samples=cfg.search.num_trials,
                                            max_concurrent_trials=max_conc),
            run_config=run_config,
        )
    t0 = time.perf_counter()
    grid = tuner.fit()
    log.info("search finished in %.0f s", time.perf_counter() - t0)
    _close_orphans(cfg, paths)
    return grid


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


