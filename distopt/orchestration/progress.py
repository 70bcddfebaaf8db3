"""Tune callbacks on the driver: a compact live table of the search (one row per trial, redrawn at
most every few seconds, instead of Tune's per-result log lines), the experiment's Ray metrics,
and the upload of the Optuna study to a remote output."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Callback

from distopt import metrics as M
from distopt.config import Config
from distopt.constraints import bounds, over_budget
from distopt.orchestration.telemetry import record_experiment
from distopt.orchestration.trial_params import canonical_params
from distopt.pareto import hypervolume, non_dominated
from distopt.results.objectives import at_chance_row, hv_reference, objective_matrix
from distopt.storage import Location

log = logging.getLogger(__name__)


def _short(key: str) -> str:
    return key.split(".")[-1][:10]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


class ProgressTable(Callback):
    """Trial id, status, searched values, epoch, the validation quality (accuracy, or the
    search's val_auc / val_logloss) and artifact size."""

    MAX_KEYS = 6  # searched values shown; the rest are in trials.parquet
    RECENT = 5  # finished trials kept in view beside the running ones

    def __init__(self, cfg: Config, interval_s: float = 15.0) -> None:
        self.keys = list(cfg.search.space)[: self.MAX_KEYS]
        self.interval_s = interval_s
        self.rows: dict[str, dict[str, Any]] = {}
        self.last_print = 0.0
        self.done = 0
        self.failed = 0
        self.total = cfg.search.num_trials
        self.budget_s = cfg.search.time_budget_s
        self.quality = M.quality(cfg.search.objectives)[0]  # the column that follows it
        self.started = time.monotonic()

    def _row(self, trial: Any, status: str, result: dict[str, Any] | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {"status": status})
        row["status"] = status
        for k in self.keys:
            row.setdefault(k, canonical_params(trial.config).get(k, "-"))
        if result:
            row[M.EPOCH] = result.get(M.EPOCH, "-")
            row[M.PHASE] = result.get(M.PHASE, "-")
            row[self.quality] = result.get(self.quality, math.nan)
            row[M.SIZE_BYTES] = result.get(M.SIZE_BYTES, math.nan)

    def render(self) -> str:
        head = ["trial", "status"] + [_short(k) for k in self.keys] + [
            "epoch", "phase", "val_acc" if self.quality == M.VAL_ACCURACY else self.quality,
            "bytes"]
        lines = [head]
        finished = [t for t, r in self.rows.items() if r["status"] != "RUNNING"]
        shown = set(finished[-self.RECENT:])
        for tid, r in self.rows.items():
            if r["status"] != "RUNNING" and tid not in shown:
                continue
            lines.append([tid[-5:], r["status"]] + [_fmt(r.get(k, "-")) for k in self.keys] +
                         [_fmt(r.get(M.EPOCH, "-")), str(r.get(M.PHASE, "-")),
                          _fmt(r.get(self.quality, math.nan)), _fmt(r.get(M.SIZE_BYTES, math.nan))])
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
        body = "\n".join("  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in lines)
        of = f" of {self.total}" if self.total else ""
        if self.budget_s:
            of += f", {time.monotonic() - self.started:.0f} of {self.budget_s:g} s"
        return f"[{self.done} done, {self.failed} failed{of}]\n{body}"

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_print >= self.interval_s:
            self.last_print = now
            log.info("%s", self.render())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial, "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._row(trial, "RUNNING", result)
        self._maybe_print()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        final = (trial.last_result or {}).get(M.PHASE) == "final"
        self._row(trial, "DONE" if final else "STOPPED", trial.last_result)
        self._maybe_print()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed += 1
        self._row(trial, "FAILED", trial.last_result)
        self._maybe_print(force=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._maybe_print(force=True)


class ExperimentGauges(Callback):
    """Exports the experiment's state as Ray metrics whenever a trial ends: trials finished and
    failed, and the hypervolume and size of the front of the trials finished so far (with the
    report's objective scaling and reference point)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def _update(self, trials: list, ending: Any, failed_now: bool) -> None:
        # Tune sets the ending trial's status only after its callbacks ran: count it here.
        def status(t: Any) -> str:
            return ("ERROR" if failed_now else "TERMINATED") if t is ending else t.status

        done = [t for t in trials if status(t) == "TERMINATED" and t.last_result
                and t.last_result.get(M.PHASE) == "final"]
        failed = sum(status(t) == "ERROR" for t in trials)
        # The report's rules: a model no better than guessing, or over a budget, is never on
        # the front.
        budget = bounds(self.cfg.search.constraints)
        rows = [t.last_result for t in done
                if not at_chance_row(t.last_result, self.cfg.data.num_classes)
                and not over_budget(t.last_result, budget)]
        pts = objective_matrix(rows, self.cfg)
        pts = pts[np.isfinite(pts).all(1)] if len(pts) else pts
        dirs = [d for _, d in self.cfg.search.objectives]
        hv = hypervolume(pts, dirs, hv_reference(self.cfg, pts)) if len(pts) else 0.0
        front = int(non_dominated(pts, dirs).sum()) if len(pts) else 0
        record_experiment(self.cfg.name, len(done), failed, hv, front)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trials, trial, failed_now=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trials, trial, failed_now=True)


TRIAL_CLOCK = "trial_clock.json"  # in the output's local directory


class TrialClock(Callback):
    """Wall-clock start and end of every trial as Tune sees them (start: its actor is up; end:
    its last result is in), kept in ``trial_clock.json`` so that ``trials.parquet`` can state
    each trial's time outside its training loop. A restarted trial keeps its latest start."""

    def __init__(self, output: Path) -> None:
        self.path = output / TRIAL_CLOCK
        self.times: dict[str, dict[str, float]] = read_trial_clock(output)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.times[trial.trial_id] = {"start": time.time()}

    def _end(self, trial: Any) -> None:
        self.times.setdefault(trial.trial_id, {})["end"] = time.time()
        self.path.write_text(json.dumps(self.times))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial)


def read_trial_clock(output: Path) -> dict[str, dict[str, float]]:
    """``{trial_id: {"start": t, "end": t}}`` written by :class:`TrialClock` (empty if none)."""
    try:
        return json.loads((output / TRIAL_CLOCK).read_text())
    except (FileNotFoundError, ValueError):
        return {}


class StudyUploader(Callback):
    """Copies the Optuna study (SQLite, in the driver's local directory) to a remote output
    whenever a trial ends, so a search resumed from another machine keeps what the sampler
    learned. Uses SQLite's backup API: a consistent copy while Optuna writes."""

    def __init__(self, output: Location) -> None:
        self.output = output

    def _upload(self) -> None:
        upload_study(self.output)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._upload()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._upload()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._upload()


def upload_study(output: Location) -> None:
    """Copy the local Optuna study to a remote output (SQLite's backup API: a consistent copy
    even while Optuna writes)."""
    import sqlite3
    import tempfile

    db = output.local / "study.db"
    if not db.exists():
        return
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "study.db"
        with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        output.write_bytes("study.db", copy.read_bytes())
