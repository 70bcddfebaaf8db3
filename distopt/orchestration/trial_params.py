"""The Tune parameters of a trial: the sampler's values, or, for a retraining of a front model
with another seed (``search.reseed``), those values inside its ``reseed`` parameter. Either way
keyed by config key as written now: a search begun before a key was renamed (its sampler
restored from Tune's state, its study from the database) still names it the old way."""

from __future__ import annotations

from typing import Any

from distopt.config import Config
from distopt.config.parse import canonical_key

__all__ = ["RESEED_KEY", "canonical_params", "unwrap_params"]

RESEED_KEY = "reseed"  # the Tune parameter of a retraining: {"trial_id", "params"}


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled values keyed by today's config keys (``compress.prune_ratio`` ->
    ``compress.prune.ratio``)."""
    return {canonical_key(Config, k): v for k, v in params.items()}


def unwrap_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's config values: a retraining's are inside its ``reseed`` parameter."""
    return canonical_params(params[RESEED_KEY]["params"] if RESEED_KEY in params else params)
