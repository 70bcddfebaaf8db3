"""A report of a search that has not finished (interrupted, killed, or still running): its
finished trials, collected as a finished search's are
(:func:`~distopt.orchestration.collect.collect`), into ``<output>/partial/``, apart from the
results the search writes when it ends.

Read from what a search keeps as it goes, never from Tune's experiment snapshot (saved every
few seconds, so it may predate the last trials): each trial's checkpoints under ``tune/`` (a
finished trial's last one holds its artifact and final metrics), and the Optuna study (every
trial's sampled values). Reads files only: no Ray instance is started, nothing of the search
is changed, and ``--resume`` continues it as before.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distopt import metrics as M
from distopt.config import load_config, storage_url
from distopt.orchestration._optuna_search import TUNE_TRIAL_ID
from distopt.orchestration.collect import collect
from distopt.results.paths import SearchPaths
from distopt.results.report import save_config, write_report
from distopt.storage import Location

log = logging.getLogger(__name__)

__all__ = ["PARTIAL_DIR", "SavedTrial", "has_saved_trials", "saved_trials",
           "write_partial_report"]

PARTIAL_DIR = "partial"
# Tune names a trial's directory <trainable>_<trial id>_<counter>_<values>_<date>.
TRIAL_DIR = re.compile(r"^[A-Za-z_]+?_([0-9a-f]{5,})_(\d+)_")


@dataclass(frozen=True)
class _Checkpoint:
    path: str


@dataclass(frozen=True)
class SavedTrial:
    """One trial as its files record it, shaped as the Tune result :func:`collect` reads."""

    path: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)  # final metrics; empty if unfinished
    checkpoint: _Checkpoint | None = None
    error: BaseException | None = None


def saved_trials(output: Path) -> list[SavedTrial]:
    """The trials of the search at ``output`` in the order Tune created them: each with its
    sampled values (from the study) and, if it finished, the final metrics and checkpoint
    its last checkpoint holds; trials the study has running are listed even before they
    wrote anything. Trials not started are not."""
    import optuna

    cfg = load_config(output / "config.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg.name, storage=storage_url(cfg) or
                                  SearchPaths(Location(str(output))).study_url)
        params = {t.user_attrs[TUNE_TRIAL_ID]: dict(t.params) for t in study.trials
                  if TUNE_TRIAL_ID in t.user_attrs}
        running = [t.user_attrs[TUNE_TRIAL_ID] for t in study.trials
                   if t.state == optuna.trial.TrialState.RUNNING and TUNE_TRIAL_ID in t.user_attrs]
    except KeyError:  # no study yet
        params, running = {}, []
    paths = SearchPaths(Location(str(output)))
    found = []
    for d in Path(paths.tune).iterdir():
        match = TRIAL_DIR.match(d.name)
        if not d.is_dir() or match is None:
            continue
        trial_id, counter = match.group(1), int(match.group(2))
        # A trial actor's checkpoints are its Tune trial's; a Ray Train trial's, its run's.
        final = sorted(c for where in (d, Path(paths.train) / trial_id)
                       for c in where.glob("checkpoint_*") if (c / M.METRICS_FILE).is_file())
        metrics, ckpt = {}, None
        if final:
            metrics = json.loads((final[-1] / M.METRICS_FILE).read_text())
            metrics = {k: (float("nan") if v is None else v) for k, v in metrics.items()}
            metrics["trial_id"] = trial_id
            ckpt = _Checkpoint(str(final[-1]))
        found.append((counter, SavedTrial(str(d), params.get(trial_id, {}), metrics, ckpt)))
    # Trials the study has running that wrote nothing yet (no checkpoint, so no directory).
    seen = {TRIAL_DIR.match(Path(t.path).name).group(1) for _, t in found}  # type: ignore
    found += [(10**9 + i, SavedTrial(str(Path(paths.tune) / trial_id), params[trial_id]))
              for i, trial_id in enumerate(running) if trial_id not in seen]
    return [t for _, t in sorted(found, key=lambda x: x[0])]


def write_partial_report(output: Path) -> dict[str, Any]:
    """``<output>/partial/``: trials.parquet, pareto.csv, report.md, the front's models
    (with that front's test accuracy) and the plots, for the trials finished so far; the
    others (running, pending, or stopped early: their files do not tell which) are
    ``UNFINISHED``. Replaces an earlier partial report."""
    location = Location(str(output))
    cfg = load_config(output / "config.yaml")
    trials = saved_trials(output)
    running = frozenset(i for i, t in enumerate(trials) if not t.metrics)
    into = output / PARTIAL_DIR
    if into.exists():
        shutil.rmtree(into)
    into.mkdir()
    save_config(cfg, into)
    collect(cfg, location, trials, into=into, running=running)
    return write_report(into)


def has_saved_trials(output: Path) -> bool:
    """Whether the search at ``output`` has a trial directory yet."""
    tune = Path(SearchPaths(Location(str(output))).tune)
    return tune.is_dir() and any(TRIAL_DIR.match(d.name) for d in tune.iterdir())
