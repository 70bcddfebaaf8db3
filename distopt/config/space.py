"""The one meaning of a ``search.space`` entry: its check against the key's type and rule, a
uniform draw from it (children), and the Optuna distribution of it (the sampler), side by side.

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

import math
import random
from typing import TYPE_CHECKING, Any, Mapping

from distopt.config.parse import coerce, describe, field_info_in

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = ["SPACE_KEYS", "UNSEARCHABLE", "check_space", "check_value", "draw", "to_optuna"]

# Keys that are config keys but not choices of a model: searching them would compare trials
# that are not comparable, or select on noise.
_DATA = "trials on different data are not comparable (search one data set per search)"
UNSEARCHABLE = {
    "name": "it names the experiment, not a choice of the model",
    "train.seed": "the search would select lucky seeds, not better models (search.final.seeds "
                  "measures the front's seed noise instead)",
    "data.val_fraction": "each value is another validation set, so the accuracies the search "
                         "compares would not be comparable",
    "data.name": _DATA, "data.path": _DATA, "data.test_path": _DATA,
    "data.num_classes": _DATA, "data.shape": _DATA, "data.kind": _DATA,
}


def check_value(root: type, dotted: str, value: Any, what: str, problems: list[str]
                ) -> None:
    """Check one candidate value of a searched key against the key's own type and rule."""
    info = field_info_in(root, dotted)
    assert info is not None
    tp, rule = info
    before = len(problems)
    v = coerce(value, tp, f"search.space.{dotted}.{what}", problems)
    if len(problems) == before and rule is not None and v is not None and not rule.check(v):
        problems.append(f"search.space.{dotted}.{what}: got {describe(value)}; "
                        f"{dotted} {rule.text}")


SPACE_KEYS = {"low", "high", "log", "step", "choices"}


def check_space(root: type, space: Mapping[str, Any], problems: list[str]) -> None:
    for key, spec in space.items():
        where = f"search.space.{key}"
        info = field_info_in(root, key)
        if info is None or key.startswith("search."):
            problems.append(f"{where}: not a config key that can be searched")
            continue
        if key in UNSEARCHABLE:
            problems.append(f"{where}: {key} cannot be searched: {UNSEARCHABLE[key]}")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: got {describe(spec)}; must be a mapping with "
                            "low/high[/log/step] or choices")
            continue
        unknown = set(spec) - SPACE_KEYS
        if unknown:
            problems.append(f"{where}: unknown entries {sorted(unknown)} (known: "
                            f"{', '.join(sorted(SPACE_KEYS))})")
        if "choices" in spec:
            if set(spec) & {"low", "high", "log", "step"}:
                problems.append(f"{where}: give either choices or low/high, not both")
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                problems.append(f"{where}.choices: got {describe(choices)}; must be a "
                                "non-empty list")
                continue
            for i, c in enumerate(choices):
                check_value(root, key, c, f"choices[{i}]", problems)
            continue
        if "low" not in spec or "high" not in spec:
            problems.append(f"{where}: needs both low and high (or choices)")
            continue
        tp = info[0]
        if tp not in (int, float):
            problems.append(f"{where}: {key} is not numeric; search it with choices")
            continue
        low, high = spec["low"], spec["high"]
        check_value(root, key, low, "low", problems)
        check_value(root, key, high, "high", problems)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            continue
        if low > high:
            problems.append(f"{where}: low <= high must hold, but got (low={low!r}, "
                            f"high={high!r})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            problems.append(f"{where}.log: got {describe(log)}; must be true or false")
        elif log and low <= 0:
            problems.append(f"{where}: a log range needs low > 0, but got low={low!r}")
        step = spec.get("step")
        if step is not None:
            if log:
                problems.append(f"{where}: step and log cannot be combined")
            elif not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
                problems.append(f"{where}.step: got {describe(step)}; must be a number > 0")
            elif tp is int and not float(step).is_integer():
                problems.append(f"{where}.step: got {step!r}; {key} is an integer, so step "
                                "must be an integer")


def draw(spec: Mapping[str, Any], kind: Any, rng: random.Random) -> Any:
    """One value of a validated ``search.space`` entry, uniformly over its range or choices
    (log-uniform with ``log``, on the grid with ``step``): what Optuna's distributions of the
    same entry contain (:func:`to_optuna`)."""
    if "choices" in spec:
        return rng.choice(list(spec["choices"]))
    low, high, step = spec["low"], spec["high"], spec.get("step")
    if step:
        value = low + step * rng.randint(0, int(math.floor((high - low) / step + 1e-9)))
        return int(value) if kind is int else float(value)
    if spec.get("log"):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
        return min(max(int(round(value)), int(low)), int(high)) if kind is int else value
    return rng.randint(int(low), int(high)) if kind is int else rng.uniform(low, high)


def to_optuna(root: type, space: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, BaseDistribution]:
    """Optuna distributions keyed by dotted config key (space must already be validated);
    Optuna is imported here, when a search starts."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    out: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        if "choices" in spec:
            out[key] = CategoricalDistribution(list(spec["choices"]))
            continue
        info = field_info_in(root, key)
        assert info is not None, key
        log, step = bool(spec.get("log", False)), spec.get("step")
        if info[0] is int:
            out[key] = IntDistribution(int(spec["low"]), int(spec["high"]), log=log,
                                       step=int(step) if step else 1)
        else:
            out[key] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=log,
                                         step=float(step) if step else None)
    return out
