"""Multi-objective early stopping: asynchronous successive halving (ASHA) as a Ray Tune
``TrialScheduler`` that ranks trials by non-dominated sorting rather than by one metric.

Ray Tune's schedulers take one metric and Optuna's pruners refuse multi-objective studies; this
one reads every search objective. Rungs sit at ``grace_epochs * reduction_factor**k`` dense
epochs (below the trial's last dense epoch). When a trial finishes a rung's epoch, its objective
vector joins the rung's record, and the trial goes on only if it is among the best
``ceil(n / reduction_factor)`` of the ``n`` trials recorded there so far, ordered by
:func:`distopt.pareto.promotion_order` (front first, then by exclusive hypervolume within a
front, which prefers points that spread the front to near-duplicates). Like ASHA, a decision
is never revisited, and the first trials at a rung go on for lack of competition.

Two guards keep the front's ends alive, as NSGA-II keeps its boundary points
(``search.keep_extremes``): a trial best at its rung on any objective (ties included) always goes
on, whatever its rank. Ranking by spread alone stopped, in the headline search, the most accurate
large model at an early rung among small fast learners: large models learn more slowly, and the
end of the front it would have held is the one a short rung judges worst. And
``search.unstopped_share`` of the trials (every k-th one started) are never stopped at all, as
Hyperband's bracket of full-length runs: a check on the rungs' judgement that costs a known share.

At a rung the size objective is the artifact the trial would export then (``expected_size_bytes``:
its pruning and bit width applied to the current dense weights); objectives not known before
the end (latency) are left out of the ranking there.

A stopped trial ends without a final result: it is never on the front, ``trials.parquet`` marks
it ``STOPPED``, and Optuna is told it was PRUNED (the samplers learn nothing from it).
The rung records live in the driver: a resumed search starts them empty.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from distopt import metrics as M
from distopt.pareto import promotion_order
from distopt.results.objectives import beyond_worst, scaled

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from distopt.config import Config

log = logging.getLogger(__name__)

__all__ = ["MultiObjectiveASHA", "is_extreme", "keeps", "rung_epochs", "rung_vector",
           "unstopped"]


def rung_epochs(grace: int, factor: int, dense_epochs: int) -> list[int]:
    """Dense epochs after which a trial is judged: grace, grace*factor, ... below the last."""
    out, r = [], grace
    while r < dense_epochs:
        out.append(r)
        r *= factor
    return out


def rung_vector(result: dict[str, Any], objectives: Sequence[tuple[str, str]]) -> list[float]:
    """The objectives as known at a rung (NaN where not reported), in the search's objective
    space (:func:`distopt.results.objectives.scaled`: sizes on a log10 scale), as the report's
    hypervolume measures them."""
    out = []
    for name, _ in objectives:
        v = result.get(M.RUNG_KEYS.get(name, name))
        out.append(scaled(name, float(v) if isinstance(v, (int, float)) else math.nan))
    return out


def keeps(points: np.ndarray, index: int, directions: Sequence[str], factor: int,
          extremes: bool = False) -> bool:
    """Whether point ``index`` is among the best ``ceil(n / factor)`` of the rung's ``n`` or,
    with ``extremes``, best of the feasible points on any objective (ties included: the
    front's ends). Columns unknown for every point (NaN) are left out; a point unknown in a
    column the others have is infeasible and ranks last."""
    points = np.asarray(points, dtype=float)
    known = ~np.isnan(points).all(axis=0)
    if not known.any():
        return True  # nothing to rank by
    pts, dirs = points[:, known], [d for d, k in zip(directions, known) if k]
    feasible = ~np.isnan(pts).any(axis=1)
    if extremes and feasible[index] and is_extreme(pts[feasible], pts[index], dirs):
        return True
    ref = [beyond_worst(pts[feasible][:, j], d) for j, d in enumerate(dirs)] \
        if feasible.any() else [0.0] * len(dirs)
    order = promotion_order(pts, dirs, ref)
    position = int(np.flatnonzero(order == index)[0])
    return position < math.ceil(len(points) / factor)


def is_extreme(points: np.ndarray, point: np.ndarray, directions: Sequence[str]) -> bool:
    """Whether ``point`` is best (ties included) of ``points`` on any objective."""
    best = [points[:, j].max() if d == "max" else points[:, j].min()
            for j, d in enumerate(directions)]
    return any(point[j] == b for j, b in enumerate(best))


def unstopped(k: int, share: float) -> bool:
    """Whether the ``k``-th trial started (0-based) is one of the ``share`` never stopped:
    every ``1/share``-th, spread evenly (share 0.25: trials 3, 7, 11, ...)."""
    return math.floor((k + 1) * share) > math.floor(k * share)


class MultiObjectiveASHA(FIFOScheduler):
    """See the module docstring. ``objectives`` are the search's ``(metric, max|min)`` pairs."""

    def __init__(self, objectives: Sequence[tuple[str, str]], grace_epochs: int,
                 reduction_factor: int, dense_epochs: int, keep_extremes: bool = True,
                 unstopped_share: float = 0.0) -> None:
        super().__init__()
        self.objectives = [tuple(o) for o in objectives]
        self.directions = [d for _, d in self.objectives]
        self.factor = reduction_factor
        self.keep_extremes = keep_extremes
        self.unstopped_share = unstopped_share
        self.rungs: dict[int, dict[str, list[float]]] = {
            r: {} for r in rung_epochs(grace_epochs, reduction_factor, dense_epochs)}
        self.stopped: dict[str, int] = {}  # trial id -> rung (dense epochs) it stopped at
        self.started = 0  # trials added so far (the unstopped share counts them)
        self.exempt: set[str] = set()  # ids of the trials never stopped

    @classmethod
    def from_config(cls, cfg: Config) -> MultiObjectiveASHA:
        s = cfg.search
        return cls(s.objectives, s.grace_epochs, s.reduction_factor,
                   cfg.trial_config().train.epochs, s.keep_extremes, s.unstopped_share)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if unstopped(self.started, self.unstopped_share):
            self.exempt.add(trial.trial_id)
        self.started += 1

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives were given; Tune's single metric/mode is not used

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]
                        ) -> str:
        if result.get(M.PHASE) != "train" or M.EPOCH not in result:
            return TrialScheduler.CONTINUE
        done = int(result[M.EPOCH]) + 1
        rung = self.rungs.get(done)
        if rung is None:
            return TrialScheduler.CONTINUE
        rung[trial.trial_id] = rung_vector(result, self.objectives)  # a restart replaces it
        ids = list(rung)
        if trial.trial_id in self.exempt or keeps(
                np.array([rung[i] for i in ids]), ids.index(trial.trial_id), self.directions,
                self.factor, self.keep_extremes):
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = done
        log.debug("trial %s stopped after %d dense epochs (%d at that rung)", trial.trial_id,
                  done, len(rung))
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        sizes = ", ".join(f"{r} epochs: {len(v)}" for r, v in self.rungs.items())
        return f"MultiObjectiveASHA: {len(self.stopped)} stopped; rungs {sizes}"
