"""The Optuna sampler a search draws its trials from (``search.sampler``), made so that Ray Tune
can pickle it.

Tune pickles the searcher, and with it the sampler, into its experiment state when a ``Tuner``
is made and whenever it saves. Optuna 5.1's genetic samplers (NSGA-II) hold a
``threading.Lock`` (``_thread_lock``), which pickle refuses ("cannot pickle '_thread.lock'
object"): every search failed before its first trial. The samplers here drop their locks when
pickled and make new ones when unpickled (a lock guards a running process's threads; a copy has
none of them waiting), and are otherwise Optuna's own.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

from distopt.config import Config

__all__ = ["BUDGET_TRIALS_GUESS", "make_sampler"]

BUDGET_TRIALS_GUESS = 32  # trials a time-budgeted search is sized for

_LOCKS = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


class _PicklableLocks:
    """Pickles an object's locks as the kind of lock they were, unpickles them as new ones."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        locks = {k: type(v) for k, v in state.items() if type(v) in _LOCKS}
        for k in locks:
            del state[k]
        state["_distopt_locks"] = {k: _LOCKS[t] is threading.RLock for k, t in locks.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for k, reentrant in state.pop("_distopt_locks", {}).items():
            state[k] = threading.RLock() if reentrant else threading.Lock()
        self.__dict__.update(state)


class NSGAIISampler(_PicklableLocks, optuna.samplers.NSGAIISampler):
    pass


class TPESampler(_PicklableLocks, optuna.samplers.TPESampler):
    pass


class RandomSampler(_PicklableLocks, optuna.samplers.RandomSampler):
    pass


def make_sampler(cfg: Config) -> Any:
    """The Optuna sampler named by ``search.sampler``, seeded. NSGA-II and TPE read each told
    trial's constraint values (``search.constraints``) themselves: constrained domination and
    feasibility-aware splits; random sampling ignores them."""
    s = cfg.search
    # Trials the search will run, for sizing the samplers' start-up: a time budget's count is
    # not known in advance (the default search fits about 30 in 3 minutes on 2 cores).
    planned = s.num_trials or BUDGET_TRIALS_GUESS
    if s.sampler == "nsga2":
        # A population far smaller than the default 50, or a 16-trial search never leaves its
        # random first generation.
        return NSGAIISampler(population_size=max(4, min(50, planned // 4)), seed=s.seed)
    if s.sampler == "tpe":
        return TPESampler(seed=s.seed, multivariate=True,
                          n_startup_trials=max(4, planned // 4))
    return RandomSampler(seed=s.seed)
