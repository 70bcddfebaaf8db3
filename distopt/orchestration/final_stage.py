"""The final stage (``search.final``): after the search, chosen front configurations are trained
again, at the trials' length or a longer one (``final.epochs``: the full length that early
stopping and short trials spared), with ``final.seeds`` seeds, and each one's decoded test
accuracy (the integer reference's for integer models) is reported as mean and standard
deviation over its runs, so that a front point whose advantage over its smaller neighbour is
within seed noise is marked as such.

Which configurations: the whole front, or, for each of ``final.select.budgets``, the front
configuration of best *validation* accuracy whose ``final.select.metric`` is at most the budget
(the test set chooses nothing). With ``final.epochs`` null the search's own run is the first
seed; with it set, every run is the stage's own (the search's was shorter). The runs are one
more Tune run (``final/`` beside ``tune/``: :mod:`distopt.orchestration.retrain`), in parallel
on the cluster like trials, and resumable.

One training run of an MNIST model moves by a few tenths of a point with its seed; a front
read from single runs mixes real trade-offs with that noise.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from typing import Any, Sequence

from distopt import metrics as M
from distopt.config import Config
from distopt.config.search_section import FinalConfig
from distopt.data import load_splits
from distopt.orchestration.retrain import retrain
from distopt.results.trials import (FINAL_EPOCHS, FINAL_SIZE, SEEDS, TEST_MEAN, TEST_SD,
                                    WITHIN_NOISE)
from distopt.storage import Location
from distopt.training import evaluate_artifact

log = logging.getLogger(__name__)

__all__ = ["FINAL_DIR", "final_jobs", "noise_marks", "run_final_stage", "select"]

FINAL_DIR = "final"  # the stage's Tune run, beside tune/


def select(rows: Sequence[dict[str, Any]], final: FinalConfig,
           by: tuple[str, str] = (M.VAL_ACCURACY, "max")) -> list[dict[str, Any]]:
    """The front rows the stage trains again, in order of size: the whole front, or the best
    by the validation metric ``by`` (name, direction: the search's quality objective,
    accuracy by default; then the smaller) under each budget of ``final.select``; a budget
    no front model fits chooses nothing, and one row chosen by two budgets is trained once."""
    metric = final.select.metric
    quality, sign = by[0], 1 if by[1] == "max" else -1
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r[metric])
    if not final.select.budgets:
        return front
    chosen: dict[str, dict[str, Any]] = {}
    for budget in final.select.budgets:
        fits = [r for r in front if r[metric] <= budget]
        if not fits:
            log.warning("final stage: no front model has %s <= %g", metric, budget)
            continue
        best = max(fits, key=lambda r: (sign * r[quality], -r[metric]))
        chosen[best["trial_id"]] = best
    return sorted(chosen.values(), key=lambda r: r[metric])


def final_jobs(cfg: Config, chosen: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage's runs: ``final.runs`` per chosen row, seeds ``train.seed + k`` (from k = 1
    when the search's own run is the first), with ``train.epochs`` set when ``final.epochs``
    is."""
    final = cfg.search.final
    first = cfg.trial_config().train.seed
    offset = 0 if final.epochs is not None else 1
    epochs = {"train.epochs": final.epochs} if final.epochs is not None else {}
    return [{"trial_id": r["trial_id"],
             "params": {**r["params"], **epochs, "train.seed": first + offset + k}}
            for r in chosen for k in range(final.runs)]


def noise_marks(points: Sequence[tuple[float, float, float]]) -> list[bool]:
    """For points ``(size, mean accuracy, sd)``: whether each one's advantage over the next
    smaller point is within seed noise, i.e. at most ``sqrt(sd^2 + sd_smaller^2)`` (the spread
    of the difference of two single runs). The smallest point has no smaller neighbour and is
    never marked."""
    marks = [False] * len(points)
    order = sorted(range(len(points)), key=lambda i: points[i][0])
    for prev, cur in zip(order, order[1:]):
        _, m0, s0 = points[prev]
        _, m1, s1 = points[cur]
        marks[cur] = m1 - m0 <= math.hypot(s0, s1)
    return marks


def run_final_stage(cfg: Config, output: Location, rows: list[dict[str, Any]],
                    max_concurrent: int) -> list[dict[str, Any]]:
    """Train the chosen configurations of ``rows`` again, evaluate each decoded file on the
    test set, and add to every row the mean, standard deviation and count of its runs' test
    scores (the search's quality metric: accuracy, AUC or log loss), the dense epochs they trained,
    the largest ``final.select.metric`` of their files, and the within-noise mark (rows not
    chosen: NaN, 0). Runs that fail are left out and logged."""
    final = cfg.search.final
    metric = final.select.metric
    quality, direction = M.quality(cfg.search.objectives)
    test_key = M.QUALITY_TEST[quality]
    chosen = [{**r, "params": json.loads(r["params_json"])}
              for r in select(rows, final, (quality, direction))]
    jobs = final_jobs(cfg, chosen)
    for r in rows:
        r[TEST_MEAN], r[TEST_SD], r[SEEDS], r[WITHIN_NOISE] = math.nan, math.nan, 0, False
        r[FINAL_EPOCHS], r[FINAL_SIZE] = 0, math.nan
    if not jobs:
        return rows
    log.info("final stage: %d configuration(s) x %d run(s)%s", len(chosen), final.runs,
             f", {final.epochs} dense epochs each" if final.epochs is not None else
             " with other seeds (the search's run is the first)")
    splits = load_splits(cfg.data)
    scores: dict[str, list[float]] = {r["trial_id"]: [] for r in chosen}
    sizes: dict[str, list[float]] = {r["trial_id"]: [] for r in chosen}
    if final.epochs is None:
        for r in chosen:
            scores[r["trial_id"]].append(r[test_key])
            sizes[r["trial_id"]].append(r[metric])
    for done in retrain(cfg, output, jobs, FINAL_DIR, max_concurrent):
        if done.artifact is None or done.metrics is None:
            continue
        tid = done.job["trial_id"]
        scores[tid].append(evaluate_artifact(done.artifact, splits, "test")[test_key])
        sizes[tid].append(float(done.metrics[metric]))
    by_id = {r["trial_id"]: r for r in rows}
    kept = [tid for tid in scores if scores[tid]]
    stats = {tid: (statistics.mean(a), statistics.stdev(a) if len(a) > 1 else math.nan, len(a))
             for tid, a in scores.items() if a}
    better = 1 if direction == "max" else -1  # noise_marks reads larger as better
    marks = noise_marks([(max(sizes[t]), better * stats[t][0], stats[t][1]) for t in kept])
    for tid, mark in zip(kept, marks):
        r = by_id[tid]
        r[TEST_MEAN], r[TEST_SD], r[SEEDS] = stats[tid]
        r[WITHIN_NOISE], r[FINAL_SIZE] = mark, max(sizes[tid])
        r[FINAL_EPOCHS] = final.epochs if final.epochs is not None else r[M.DENSE_EPOCHS]
    return rows
