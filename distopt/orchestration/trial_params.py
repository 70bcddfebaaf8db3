"""The Tune parameters of a trial: the sampler's values, or, for a retraining of a front model
with another seed (``search.reseed``), those values inside its ``reseed`` parameter."""

from __future__ import annotations

from typing import Any

__all__ = ["RESEED_KEY", "unwrap_params"]

RESEED_KEY = "reseed"  # the Tune parameter of a retraining: {"trial_id", "params"}


def unwrap_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's config values: a retraining's are inside its ``reseed`` parameter."""
    return params[RESEED_KEY]["params"] if RESEED_KEY in params else params
