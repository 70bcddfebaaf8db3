"""Ray Tune's ``OptunaSearch`` with a wall-clock budget, tolerant of a trial its restored state
does not know.

A driver killed between Tune saving its trial list and saving the searcher's state leaves a
trial that Tune resumes but whose Optuna trial the restored searcher never created; when it
completes, ``OptunaSearch.on_trial_complete`` raises ``KeyError`` and the resumed search fails
(seen once in CI: the S3 kill-and-resume test). The trial's result is still kept by Tune and in
``trials.parquet``; only the sampler does not learn from it, which is logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from distopt import metrics as M

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """With ``deadline`` (a ``time.time()`` value), no trial is suggested after it: the search
    ends when the trials running then finish. The deadline is saved with the searcher, so a
    resumed search keeps the budget it was started with."""

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            if not getattr(self, "_budget_logged", False):
                log.info("time budget reached: no new trials; waiting for the running ones")
                self._budget_logged = True
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def _known(self, trial_id: str) -> bool:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return True
        log.warning("trial %s started just before the search was interrupted and the restored "
                    "Optuna searcher has no record of it: its result is kept, but not told to "
                    "the sampler", trial_id)
        return False

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._known(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """Optuna is told the final (decoded-artifact) metrics of a complete trial; a trial
        that ended before its final result is FAIL if it raised, else PRUNED (early stopping
        stopped it): never the objectives of an unfinished model."""
        if self._known(trial_id):
            final = bool(result) and result.get(M.PHASE) == "final"
            super().on_trial_complete(trial_id, result if final else None, error)
