"""The Tune parameters of a trial: the sampler's values, or, for a retraining of a front model
in the final stage (``search.final``), those values inside its ``retrain`` parameter.

The sampler (the Optuna study, and so Tune's trial config) names a config key as it was first
spelled (``compress.prune_ratio`` for ``compress.prune.ratio``): Optuna orders a genetic
sampler's parameters by name, so a rename would change which random draw each key gets and
every search after the first generation would change; and a study begun before a rename goes
on with the same names when resumed. Everything else reads the values under today's keys
(:func:`canonical_params`)."""

from __future__ import annotations

from typing import Any

from distopt.config import Config
from distopt.config.parse import canonical_key, legacy_names

__all__ = ["RETRAIN_KEY", "canonical_params", "sampler_name", "unwrap_params"]

RETRAIN_KEY = "retrain"  # the Tune parameter of a retraining: {"trial_id", "params"}
_FIRST_SPELLING = legacy_names(Config)


def sampler_name(key: str) -> str:
    """The sampler's name of a config key: as the key was first spelled."""
    return _FIRST_SPELLING.get(key, key)


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled values keyed by today's config keys (``compress.prune_ratio`` ->
    ``compress.prune.ratio``)."""
    return {canonical_key(Config, k): v for k, v in params.items()}


def unwrap_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's config values: a retraining's are inside its ``retrain`` parameter."""
    return canonical_params(params[RETRAIN_KEY]["params"] if RETRAIN_KEY in params else params)
