"""JSON as strict parsers read it: distopt's result files (``metrics.json``, ``manifest.json``,
``history.json``, ``distopt evaluate``'s output) write a metric that has no value (NaN, or an
infinity) as ``null``, never Python's bare ``NaN``, which is not JSON."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps"]


def _strict(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy and torch scalars
        return _strict(v.item())
    return v


def dumps(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON (NaN and infinities as ``null``), with a final newline."""
    return json.dumps(_strict(obj), indent=indent, allow_nan=False, default=str) + "\n"
