"""Search-space entries (validated in :mod:`distopt.config`) as Optuna distributions.

Each ``search.space`` entry names a dotted config key and one of:

- ``{low, high}``: a uniform range over the key's own type (float or int). Both bounds are
  *inclusive*: Optuna's ``FloatDistribution``/``IntDistribution`` can return ``low`` and
  ``high``. (A continuous range reaches a bound with probability ~0 unless ``step`` is set.)
- ``{low, high, log: true}``: log-uniform; needs ``low > 0``.
- ``{low, high, step}``: a grid ``low, low + step, ...`` up to ``high`` (inclusive when the
  range divides evenly; otherwise the last grid point below ``high``).
- ``{choices: [...]}``: categorical; every choice is checked against the key's rule.
"""

from __future__ import annotations

from typing import Any, Mapping

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from distopt.config import field_info

__all__ = ["to_optuna"]


def to_optuna(space: Mapping[str, Mapping[str, Any]]) -> dict[str, BaseDistribution]:
    """Optuna distributions keyed by dotted config key (space must already be validated)."""
    out: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        if "choices" in spec:
            out[key] = CategoricalDistribution(list(spec["choices"]))
            continue
        info = field_info(key)
        assert info is not None, key
        log, step = bool(spec.get("log", False)), spec.get("step")
        if info[0] is int:
            out[key] = IntDistribution(int(spec["low"]), int(spec["high"]), log=log,
                                       step=int(step) if step else 1)
        else:
            out[key] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=log,
                                         step=float(step) if step else None)
    return out
