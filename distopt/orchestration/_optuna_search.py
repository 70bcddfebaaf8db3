"""Ray Tune's ``OptunaSearch`` with a wall-clock budget, that never trains sampled values twice,
and tolerant of a trial its restored state does not know.

A driver killed between Tune saving its trial list and saving the searcher's state leaves a
trial that Tune resumes but whose Optuna trial the restored searcher never created; when it
completes, ``OptunaSearch.on_trial_complete`` raises ``KeyError`` and the resumed search fails
(seen once in CI: the S3 kill-and-resume test). The trial's result is still kept by Tune and in
``trials.parquet``; only the sampler does not learn from it, which is logged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from distopt import metrics as M
from distopt.constraints import Bound, violations
from distopt.orchestration.trial_params import sampler_name

log = logging.getLogger(__name__)

# User attributes of the study's trials: the Tune trial that trained one, and, on a sampled
# duplicate (never trained), the number of the study trial whose result it was told. With
# search.constraints each told trial also carries Optuna's constraint values, one per budget
# (named by its metric; <= 0: within it), which NSGA-II and TPE read to learn feasibility.
TUNE_TRIAL_ID = "tune_trial_id"
DUPLICATE_OF = "duplicate_of"


class ResumableOptunaSearch(OptunaSearch):
    """With ``deadline`` (a ``time.time()`` value), no trial is suggested after it: the search
    ends when the trials running then finish. The deadline is saved with the searcher, so a
    resumed search keeps the budget it was started with.

    It limits how many trials run at once itself (Tune's ``max_concurrent_trials`` hands the
    limit to it), instead of Tune's ``ConcurrencyLimiter``: that one restores its set of live
    trials from the searcher state, which a killed driver may have saved with a trial Tune's
    experiment state never got. That trial never ends, and a search limited to one trial at a
    time then waits forever on resume (seen here with the S3 kill-and-resume test). After a
    restore, the trials the saved state calls live count again only once they report."""

    MAX_DUPLICATES = 50  # sampled duplicates answered in a row before one is trained anyway

    def __init__(self, *args: Any, deadline: float | None = None,
                 constraints: list[Bound] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.constraints = list(constraints or [])  # search.constraints
        # Sampled values -> (Optuna trial number, objective values, violations) of every
        # complete trial.
        self.results: dict[tuple, tuple[int, list[float], list[float]]] = {}
        self.duplicates = 0
        self.max_concurrent: int | None = None
        self.live: set[str] = set()  # suggested, not ended
        self.unconfirmed: set[str] = set()  # live in a restored state, not heard from since

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # Tune's ConcurrencyLimiter then leaves the limiting to this searcher

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.live = set(getattr(self, "live", set()))
        self.unconfirmed = set(self.live)

    def _running(self) -> int:
        return len(self.live - self.unconfirmed)

    @staticmethod
    def _key(params: dict[str, Any]) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in params.items()))

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The sampler's next values, except that values a complete trial already had are not
        trained again: Optuna is told that trial's objectives for them at once (the study
        records it, with user attribute ``duplicate_of``; ``trials.parquet`` gets a
        ``DUPLICATE`` row), and the sampler is asked again."""
        if self.deadline is not None and time.time() >= self.deadline:
            if not getattr(self, "_budget_logged", False):
                log.info("time budget reached: no new trials; waiting for the running ones")
                self._budget_logged = True
            return Searcher.FINISHED
        if self.max_concurrent and self._running() >= self.max_concurrent:
            return None  # asked again when a trial ends
        for _ in range(self.MAX_DUPLICATES):
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            earlier = self.results.get(self._key(ot_trial.params)) if ot_trial else None
            if earlier is None:
                if ot_trial is not None:  # which Tune trial trains it (report: duplicate rows)
                    ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
                break
            number, values, *broken = earlier  # (searchers saved before budgets: no third)
            ot_trial.set_user_attr(DUPLICATE_OF, number)
            self._constrain(ot_trial, broken[0] if broken else [])
            self._ot_study.tell(ot_trial, values)
            del self._ot_trials[trial_id]
            self.duplicates += 1
            log.debug("sampled values of optuna trial %d again: told its result, not trained",
                      number)
        if config not in (None, Searcher.FINISHED):
            self.live.add(trial_id)
        return config

    def _known(self, trial_id: str) -> bool:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return True
        log.warning("trial %s started just before the search was interrupted and the restored "
                    "Optuna searcher has no record of it: its result is kept, but not told to "
                    "the sampler", trial_id)
        return False

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.unconfirmed.discard(trial_id)
        if self._known(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """Optuna is told the final (decoded-artifact) metrics of a complete trial; a trial
        that ended before its final result is FAIL if it raised, else PRUNED (early stopping
        stopped it): never the objectives of an unfinished model."""
        self.live.discard(trial_id)
        self.unconfirmed.discard(trial_id)
        if self._known(trial_id):
            final = bool(result) and result.get(M.PHASE) == "final"
            ot_trial = self._ot_trials.get(trial_id)
            if final and ot_trial is not None:
                values = self._values(result)
                broken = self._violations(result)
                self._constrain(ot_trial, broken)  # before it is told: the sampler reads them
                if values is not None:
                    self.results[self._key(ot_trial.params)] = (ot_trial.number, values, broken)
                params, distributions = dict(ot_trial.params), dict(ot_trial.distributions)
            super().on_trial_complete(trial_id, result if final else None, error)
            if final and ot_trial is not None and result.get(M.CHILDREN):
                # A genetic sampler (NSGA-II) counts a trial in the generation its system
                # attributes name: children join their parent's.
                system = {k: v for k, v in self._ot_study._storage.get_trial_system_attrs(
                    ot_trial._trial_id).items() if k.endswith(":generation")}
                self._add_children(ot_trial.number, params, distributions, system,
                                   result[M.CHILDREN])

    def _violations(self, metrics: dict[str, Any]) -> list[float]:
        return violations(metrics, getattr(self, "constraints", []))

    def _names(self, broken: list[float]) -> dict[str, float]:
        return {b.metric: v for b, v in zip(getattr(self, "constraints", []), broken)}

    def _constrain(self, ot_trial: Any, broken: list[float]) -> None:
        for name, value in self._names(broken).items():
            ot_trial.set_constraint(name, value)

    def _values(self, metrics: dict[str, Any]) -> list[float] | None:
        values = [metrics.get(m) for m in self.metric]
        return values if all(isinstance(v, (int, float)) and v == v for v in values) else None

    def _add_children(self, parent: int, params: dict[str, Any],
                      distributions: dict[str, Any], system_attrs: dict[str, Any],
                      children_json: str) -> None:
        """Train once, compress many: each child of a trial becomes a complete trial of the
        study with its full parameters (the parent's, with the child's compress.* values) and
        its decoded metrics (user attribute ``parent``), so the sampler learns from it, and a
        later sample of the same values is answered with its result instead of trained."""
        import optuna

        for child in json.loads(children_json):
            values = self._values(child["metrics"])
            child_params = {**params, **{sampler_name(k): v for k, v in child["params"].items()}}
            if values is None or set(child_params) != set(distributions):
                continue
            broken = self._violations(child["metrics"])
            frozen = optuna.trial.create_trial(
                params=child_params, distributions=distributions, values=values,
                user_attrs={"parent": parent, "file": child["file"]},
                system_attrs=system_attrs, constraints=self._names(broken) or None)
            self._ot_study.add_trial(frozen)
            number = len(self._ot_study.get_trials(deepcopy=False)) - 1
            self.results.setdefault(self._key(child_params), (number, values, broken))
