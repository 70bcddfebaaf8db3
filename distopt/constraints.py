"""Hard budgets on a search's models (``search.constraints``): what they mean, read once.

``{flash_bytes: 16000, peak_ram_bytes: {max: 4096}, val_accuracy: {min: 0.9}}``: a plain number
is an upper bound; a mapping gives ``min`` and/or ``max``. A model outside any bound is over
budget: never on the front, whatever its other numbers. The sampler learns feasibility from
each trial's *violations* (Optuna's constraints: one value per bound, <= 0 where it holds),
and a sampled configuration whose architecture alone breaks a budget the spec decides
(:data:`SPEC_METRICS`: flash, RAM, MACs) is answered without training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from distopt import metrics as M

__all__ = ["Bound", "CONSTRAINABLE", "SPEC_METRICS", "bounds", "over_budget", "problems",
           "violations"]

# Known from the architecture and bit widths before any training (the file a configuration
# would export has them whatever its weights): a budget on these is checked up front.
SPEC_METRICS = (M.FLASH_BYTES, M.WEIGHT_FLASH_BYTES, M.PEAK_RAM_BYTES, M.MACS)
# What a budget may name: every objective, and the parameter count.
CONSTRAINABLE = (*M.OBJECTIVES, M.PARAMS)  # (never the test set: nothing is selected on it)


@dataclass(frozen=True)
class Bound:
    metric: str
    low: float | None = None
    high: float | None = None

    def text(self) -> str:
        parts = ([f">= {self.low:,g}"] if self.low is not None else []) + \
            ([f"<= {self.high:,g}"] if self.high is not None else [])
        return f"{self.metric} {' and '.join(parts)}"

    def violation(self, value: float) -> float:
        """How far ``value`` is outside the bound, relative to it (<= 0: within; a missing
        value counts as outside by 1)."""
        if not isinstance(value, (int, float)) or math.isnan(value):
            return 1.0
        out = -math.inf
        if self.high is not None:
            out = max(out, (value - self.high) / max(abs(self.high), 1e-12))
        if self.low is not None:
            out = max(out, (self.low - value) / max(abs(self.low), 1e-12))
        return out


def problems(constraints: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ``search.constraints`` mapping, one line each."""
    out = []
    for name, spec in constraints.items():
        key = f"search.constraints.{name}"
        if name not in CONSTRAINABLE:
            out.append(f"{key}: unknown metric; one of {', '.join(CONSTRAINABLE)}")
            continue
        spec = {"max": spec} if not isinstance(spec, Mapping) else spec
        extra = sorted(set(spec) - {"min", "max"})
        if extra or not spec:
            out.append(f"{key}: got {dict(spec)!r}; a number (an upper bound) or a mapping "
                       "with min and/or max")
            continue
        for side, v in spec.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                out.append(f"{key}.{side}: got {v!r}; must be a number >= 0")
        lo, hi = spec.get("min"), spec.get("max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
            out.append(f"{key}: min {lo} is above max {hi}; no model could be within it")
    return out


def bounds(constraints: Mapping[str, Any]) -> list[Bound]:
    """The budgets of a validated ``search.constraints`` mapping, in its order."""
    out = []
    for name, spec in constraints.items():
        spec = {"max": spec} if not isinstance(spec, Mapping) else spec
        out.append(Bound(name, None if spec.get("min") is None else float(spec["min"]),
                         None if spec.get("max") is None else float(spec["max"])))
    return out


def violations(metrics: Mapping[str, Any], budget: list[Bound]) -> list[float]:
    """One value per bound, <= 0 where the metrics keep it (Optuna's constraint values)."""
    return [b.violation(metrics.get(b.metric, math.nan)) for b in budget]


def over_budget(metrics: Mapping[str, Any], budget: list[Bound]) -> str:
    """The bounds ``metrics`` break, as text ("" when within every one)."""
    broken = [b for b, v in zip(budget, violations(metrics, budget)) if v > 0]
    return "; ".join(f"{b.metric} {_value(metrics.get(b.metric))} (budget {b.text()})"
                     for b in broken)


def _value(v: Any) -> str:
    return f"{v:,g}" if isinstance(v, (int, float)) and not math.isnan(v) else "unknown"
