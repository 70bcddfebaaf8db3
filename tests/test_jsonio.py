"""Result files are strict JSON: a metric without a value is null, never a bare NaN."""

from __future__ import annotations

import json
import math

import numpy as np

from distopt.jsonio import dumps


def test_nan_and_infinities_become_null_and_numpy_scalars_plain_numbers():
    text = dumps({"a": math.nan, "b": [1.5, math.inf, np.float32(0.25)], "c": np.int64(3)})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None, 0.25], "c": 3}
    assert text.endswith("\n")
