"""Ray Tune's ``OptunaSearch``, tolerant of a trial its restored state does not know.

A driver killed between Tune saving its trial list and saving the searcher's state leaves a
trial that Tune resumes but whose Optuna trial the restored searcher never created; when it
completes, ``OptunaSearch.on_trial_complete`` raises ``KeyError`` and the resumed search fails
(seen once in CI: the S3 kill-and-resume test). The trial's result is still kept by Tune and in
``trials.parquet``; only the sampler does not learn from it, which is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
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
        if self._known(trial_id):
            super().on_trial_complete(trial_id, result, error)
