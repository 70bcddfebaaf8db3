"""The ``search`` section as data: how trials are drawn, scheduled and stopped, hard budgets,
and the final stage that trains chosen front configurations again (:class:`FinalConfig`). Apart
from :mod:`.sections` because it is the one section that is about the search, not the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from distopt import metrics
from distopt.config.rules import Rule, in_range, option

__all__ = ["FinalConfig", "FinalSelectConfig", "SELECT_METRICS", "SearchConfig"]

SELECT_METRICS = (metrics.SIZE_BYTES, *metrics.DEVICE_METRICS)


@dataclass(frozen=True)
class FinalSelectConfig:
    """Which front configurations the final stage trains again, chosen on validation only."""

    budgets: tuple[float, ...] = option((), Rule(lambda v: all(b > 0 for b in v),
                                                 "must be numbers > 0"),
                                        "empty: the whole front; else, for each budget, the "
                                        "front configuration of best validation accuracy whose "
                                        "select.metric is at most it")
    metric: str = option(metrics.SIZE_BYTES, Rule(lambda v: v in SELECT_METRICS,
                                                  "must be one of " + ", ".join(SELECT_METRICS)),
                         "the size the budgets are in (size_bytes: the .dopt file; flash_bytes: "
                         "what a device keeps, ...)")


@dataclass(frozen=True)
class FinalConfig:
    """The final stage (:mod:`distopt.orchestration.final_stage`): after the search, chosen front
    configurations trained again, at the trials' length or a longer one, with several seeds;
    their decoded test accuracy reported as mean and sd."""

    seeds: int = option(0, in_range(0, 20), "runs per chosen configuration; with epochs null "
                        "the search's own run is the first (seeds - 1 retrainings), and 0 or 1 "
                        "is off; points within seed noise of their smaller neighbour are marked")
    epochs: int | None = option(None, Rule(lambda v: v is None or v >= 1,
                                           "must be null or >= 1"),
                                "dense epochs of the final runs (e.g. the full length early "
                                "trials were spared); null: the trials' own. Set, every run of "
                                "the stage is a new one (max(seeds, 1) of them)")
    select: FinalSelectConfig = field(default_factory=FinalSelectConfig)

    @property
    def active(self) -> bool:
        return self.seeds > 1 or self.epochs is not None

    @property
    def runs(self) -> int:
        """Runs per chosen configuration the stage trains (the search's own not counted)."""
        return max(self.seeds, 1) if self.epochs is not None else max(self.seeds - 1, 0)


@dataclass(frozen=True)
class SearchConfig:
    # search.reseed (a noise-aware front) was the final stage's seeds before it had epochs.
    ALIASES: ClassVar[dict[str, str]] = {"reseed": "final.seeds"}

    space: dict[str, Any] = option({}, doc="dotted key -> {low, high, log, step} or {choices}")
    objectives: tuple[tuple[str, str], ...] = option(
        metrics.DEFAULT_OBJECTIVES, doc="(metric, max|min) pairs")
    constraints: dict[str, Any] = option({}, doc="hard budgets: metric -> upper bound, or "
                                        "{min, max} (e.g. {flash_bytes: 16000, "
                                        "peak_ram_bytes: 4096, val_accuracy: {min: 0.9}}); a "
                                        "model outside one is never on the front, and a "
                                        "configuration whose architecture alone breaks a "
                                        "flash, RAM or MACs budget is not trained (distopt."
                                        "constraints)")
    sampler: Literal["nsga2", "tpe", "random"] = option("nsga2", doc="Optuna sampler")
    seed: int = option(0, in_range(0), "sampler seed")
    num_trials: int | None = option(16, Rule(lambda v: v is None or v >= 1,
                                  "must be null or >= 1"), "trials in the search; null: as "
                                  "many as time_budget_s allows")
    time_budget_s: float | None = option(None, Rule(lambda v: v is None or v > 0,
                                       "must be null or > 0"), "wall-clock budget in seconds: "
                                       "no trial starts after it (running ones finish); with "
                                       "num_trials, whichever ends first")
    max_concurrent: int | None = option(None, Rule(lambda v: v is None or v >= 1,
                                      "must be null or >= 1"),
                                      "null: derived from cluster and per-trial resources")
    scheduler: Literal["fifo", "mo_asha"] = option(
        "fifo", doc="fifo: every trial runs to the end; mo_asha: multi-objective asynchronous "
        "successive halving over dense epochs (trials outside the top 1/reduction_factor of "
        "a rung by non-dominated sorting stop there)")
    grace_epochs: int = option(1, in_range(1), "mo_asha: dense epochs of the first rung")
    reduction_factor: int = option(3, in_range(2), "mo_asha: rungs at grace_epochs x factor^k "
                                 "(below train.epochs); 1/factor of a rung's trials go on")
    keep_extremes: bool = option(True, doc="mo_asha: a trial best at a rung on any objective "
                                 "always goes on (the front's ends: a large accurate model "
                                 "that learns slowly, the smallest one)")
    unstopped_share: float = option(0.0, in_range(0.0, 1.0), "mo_asha: this share of the "
                                    "trials (every 1/share-th started) is never stopped, as a "
                                    "Hyperband bracket of full-length runs")
    storage: str | None = option(None, doc="Optuna RDB URL; null: SQLite in the experiment dir. "
                               "Write a password as ${ENV_VAR}: it is read from the environment "
                               "when the study opens; a literal one is redacted in results")
    trial_overrides: dict[str, Any] = option({}, doc="dotted key -> value every trial uses "
                                            "instead of the sections above (e.g. fewer epochs)")
    final: FinalConfig = field(default_factory=lambda: FinalConfig())
    children: int = option(0, in_range(0, 64), "train once, compress many: each trial that "
                         "finishes dense training also compresses its dense model with this "
                         "many other values of the space's compress.* keys (drawn at random), "
                         "each a trial of its own in the results and the study")
    reuse_dense: bool = option(True, doc="train once, compress many across trials: a trial whose "
                             "settings differ from an earlier trial's only in compress.* "
                             "fine-tunes that trial's dense model (kept in <output>/dense) "
                             "instead of training its own")
