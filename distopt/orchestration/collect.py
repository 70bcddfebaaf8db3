"""Tune's results of a search, turned into ``trials.parquet`` rows (trials, their children, the
sampler's duplicates) and the front's artifacts copied to ``models/``, with the test accuracy of
the front only: the one use of the test set. Runs once after a search."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from distopt import metrics as M
from distopt.config import Config, ConfigError, storage_url
from distopt.config.parse import set_dotted
from distopt.constraints import bounds, over_budget
from distopt.data import load_splits
from distopt.orchestration._optuna_search import DUPLICATE_OF as ATTR
from distopt.orchestration._optuna_search import TUNE_TRIAL_ID
from distopt.orchestration.progress import read_trial_clock
from distopt.orchestration.trial_params import canonical_params
from distopt.pareto import non_dominated
from distopt.results.objectives import at_chance_row, objective_matrix
from distopt.results.paths import SearchPaths
from distopt.results.trials import (AT_CHANCE, DUPLICATE, DUPLICATE_OF, FINAL_METRICS,
                                    OVER_BUDGET, STOPPED, UNFINISHED, write_trials)
from distopt.storage import Location
from distopt.training import evaluate_artifact

__all__ = ["checkpoint_path", "collect", "read_artifact"]


def checkpoint_path(result: Any) -> str:
    """Where a Tune result's last checkpoint is: Ray Train trials report it, trial-actor ones
    hold it; "" where there is none."""
    m = result.metrics or {}
    return m.get("checkpoint_path") or (
        result.checkpoint.path if result.checkpoint is not None else "")


def read_artifact(location: Location, checkpoint: str, name: str = M.ARTIFACT_FILE) -> bytes:
    """The file ``name`` a trial wrote beside its checkpoint (``checkpoint_path``)."""
    return location.read_bytes(checkpoint.removeprefix("file://").rstrip("/") + "/" + name)


def collect(cfg: Config, location: Location | Path, grid: Any, into: Path | None = None,
            running: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """Tune results -> ``trials.parquet`` + ``models/`` in the location's local directory (or
    ``into``; artifacts read from the trials' checkpoints, wherever they are stored); test
    accuracy of the front only. ``running``: the positions in ``grid`` of trials that had not
    finished (a partial report of an interrupted search): status ``UNFINISHED``."""
    location = location if isinstance(location, Location) else Location(str(location))
    clock = read_trial_clock(location.local)
    rows = []
    # The grid lists trials in the order Tune created them: that order is the trial number.
    for number, result in enumerate(grid):
        m = result.metrics or {}
        params = canonical_params(result.config or {})
        trial_id = m.get("trial_id") or Path(result.path).name
        complete = result.error is None and m.get(M.PHASE) == "final"
        # Ended without error and without its final result: early stopping stopped it.
        stopped = result.error is None and not complete and bool(m)
        row: dict[str, Any] = {
            "trial_id": trial_id, "trial_number": number,
            # A configuration that broke a spec budget was answered without training.
            "status": (OVER_BUDGET if m.get(M.OVER_BUDGET) else "COMPLETE") if complete else
            UNFINISHED if number in running else (STOPPED if stopped else "FAILED"),
            "error": "" if result.error is None else _error_text(result.error),
            "checkpoint_path": checkpoint_path(result),
            "params_json": json.dumps({k: params.get(k) for k in cfg.search.space}),
        }
        for k in cfg.search.space:
            row[f"param.{k}"] = params.get(k)
        for k in FINAL_METRICS:
            v = m.get(k, math.nan)
            # A stopped trial keeps the epoch it stopped after; its other numbers are not of
            # a decoded artifact, so they are left out (NaN) rather than mixed in.
            keep = complete or (stopped and k == M.EPOCH)
            row[k] = float(v) if isinstance(v, (int, float)) and keep else math.nan
        times = clock.get(trial_id, {})
        row[M.TRIAL_WALL_S] = times["end"] - times["start"] if complete and len(times) == 2 \
            else math.nan
        # Time the trial spent outside fit() (start-up, teardown, reporting): what scheduling
        # and Ray Train cost on top of the training itself.
        row[M.OVERHEAD_S] = row[M.TRIAL_WALL_S] - row[M.TRAIN_SECONDS]
        row[M.PRECISION] = str(m.get(M.PRECISION, ""))
        row[M.TF32] = bool(m.get(M.TF32, False))
        row[M.EARLY_STOPPED] = bool(m.get(M.EARLY_STOPPED, False))
        # Dense weights another trial trained and stored (search.reuse_dense): its id.
        row[M.DENSE_FROM] = str(m.get(M.DENSE_FROM) or "")
        row["config_json"] = _trial_config_json(cfg, params)
        row[M.PARENT_ID] = ""
        row[DUPLICATE_OF] = ""
        row["artifact_file"] = M.ARTIFACT_FILE
        rows.append(row)
        if complete and m.get(M.CHILDREN):
            rows += _child_rows(cfg, row, json.loads(m[M.CHILDREN]), params)
    rows.sort(key=lambda r: r["trial_number"])  # stable: children stay after their parent
    rows += _duplicate_rows(cfg, location, rows)

    budget = bounds(cfg.search.constraints)
    for r in rows:  # no better than guessing, or over a budget: never on the front
        r[AT_CHANCE] = r["status"] == "COMPLETE" and at_chance_row(r, cfg.data.num_classes)
        r[M.OVER_BUDGET] = over_budget(r, budget) if r["status"] in ("COMPLETE", OVER_BUDGET) \
            else ""
    pts = objective_matrix(rows, cfg)
    done = np.array([r["status"] == "COMPLETE" and not r[AT_CHANCE] and not r[M.OVER_BUDGET]
                     for r in rows], bool)
    front = np.zeros(len(rows), bool)
    if done.any():
        front[np.flatnonzero(done)] = non_dominated(pts[done], [d for _, d in cfg.search.objectives])
    output = into or location.local
    models = output / "models"
    models.mkdir(parents=True, exist_ok=True)
    splits = load_splits(cfg.data) if front.any() else None
    for row, on_front in zip(rows, front):
        row["pareto"] = bool(on_front)
        row[M.TEST_ACCURACY] = math.nan
        if cfg.data.num_classes == 2:
            row[M.TEST_AUC] = row[M.TEST_LOGLOSS] = math.nan
        row["artifact"] = ""
        if not on_front:
            continue
        dst = models / f"{row['trial_id']}.dopt"
        dst.write_bytes(read_artifact(location, row["checkpoint_path"], row["artifact_file"]))
        row["artifact"] = str(dst.relative_to(output))
        assert splits is not None
        tested = evaluate_artifact(dst.read_bytes(), splits, "test")
        row.update({k: tested[k] for k in M.QUALITY_TEST.values() if k in tested})
    write_trials(rows, output)
    return rows


def _child_rows(cfg: Config, parent: dict[str, Any], children: list[dict[str, Any]],
                params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a trial's children (train once, compress many): the parent's sampled values
    with the child's compress.* values, its decoded metrics, ``parent_id``, and its artifact
    beside the parent's in the same checkpoint. Their time is in the parent's ``train_seconds``
    and ``trial_wall_s``, so theirs are only ``train_seconds`` (fork, compress, evaluate)."""
    rows = []
    for i, child in enumerate(children):
        values = {**{k: params.get(k) for k in cfg.search.space}, **child["params"]}
        row = {**parent, "trial_id": f"{parent['trial_id']}-c{i}", M.PARENT_ID: parent["trial_id"],
               "params_json": json.dumps(values), "artifact_file": child["file"],
               "config_json": _trial_config_json(cfg, values),
               M.TRIAL_WALL_S: math.nan, M.OVERHEAD_S: math.nan}
        for k in cfg.search.space:
            row[f"param.{k}"] = values.get(k)
        for k in FINAL_METRICS:
            v = child["metrics"].get(k, math.nan)
            row[k] = float(v) if isinstance(v, (int, float)) else math.nan
        rows.append(row)
    return rows


def _duplicate_rows(cfg: Config, location: Location, rows: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """Rows for the sampler's duplicates: values it proposed again after a trial (or child)
    had finished with them, answered with that result instead of a training (the study holds
    them as trials with user attribute ``duplicate_of``). Status ``DUPLICATE``, the original's
    id in ``duplicate_of``, no metrics of their own: never on the front, never counted twice."""
    import optuna

    try:
        study = optuna.load_study(study_name=cfg.name,
                                  storage=storage_url(cfg) or SearchPaths(location).study_url)
    except KeyError:
        return []
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}

    def tune_id(number: int) -> str:
        t = by_number.get(number)
        if t is None:
            return ""
        if "parent" in t.user_attrs:  # a child: <parent>-c<i> (file child_<i>.dopt)
            index = str(t.user_attrs.get("file", "")).removeprefix("child_").removesuffix(".dopt")
            return f"{tune_id(t.user_attrs['parent'])}-c{index}"
        return str(t.user_attrs.get(TUNE_TRIAL_ID, ""))

    template = rows[0] if rows else {}
    out = []
    for t in trials:
        if ATTR not in t.user_attrs:
            continue
        original = tune_id(int(t.user_attrs[ATTR]))
        row = {k: (math.nan if isinstance(v, float) else type(v)() if v is not None else None)
               for k, v in template.items()}
        params = canonical_params(t.params)
        row.update({"trial_id": f"{original or 'unknown'}-dup{t.number}",
                    "trial_number": len(rows) + len(out), "status": DUPLICATE,
                    DUPLICATE_OF: original, M.PARENT_ID: "", "artifact_file": "",
                    "params_json": json.dumps(params),
                    "config_json": _trial_config_json(cfg, params)})
        for k in cfg.search.space:
            row[f"param.{k}"] = params.get(k)
        out.append(row)
    return out


def _trial_config_json(cfg: Config, params: dict[str, Any]) -> str:
    """The full config a trial ran with; for a trial whose sampled values were invalid, the
    starting config with those values written in unvalidated."""
    sampled = {k: params[k] for k in cfg.search.space if k in params}
    try:
        return json.dumps(cfg.trial_config().with_overrides(sampled).public_dict())
    except ConfigError:
        raw = cfg.trial_config().public_dict()
        for key, value in sampled.items():
            set_dotted(raw, key, value, [])
        return json.dumps(raw)


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Tune wraps the trial's exception; the last line names the root cause.
    return (text[-1] if text else type(error).__name__)[:500]
