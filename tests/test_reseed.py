"""The noise-aware front (search.reseed): the within-noise rule, and a search that retrains
its front with another seed and reports mean and spread."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from distopt import metrics as M
from distopt.orchestration.reseed import noise_marks
from distopt.orchestration.trial_params import unwrap_params
from distopt.results.trials import SEEDS, TEST_MEAN, TEST_SD, WITHIN_NOISE

from conftest import CONFIGS


def test_a_point_is_within_noise_when_its_gain_over_the_smaller_one_is_at_most_the_spread():
    # (bytes, mean, sd), given out of size order on purpose.
    points = [(5000, 0.975, 0.003), (1000, 0.950, 0.004), (20000, 0.978, 0.002),
              (9000, 0.960, 0.001)]
    # Sorted by size: 1000 (0.950), 5000 (0.975), 9000 (0.960), 20000 (0.978).
    # 5000 gains 0.025 > hypot(.004, .003) = .005: real. 9000 loses 0.015: within noise.
    # 20000 gains 0.018 over 9000 > hypot(.001, .002): real.
    assert noise_marks(points) == [False, False, False, True]
    tight = [(1, 0.90, 0.01), (2, 0.91, 0.01)]  # gain 0.01 <= hypot(.01, .01) = 0.0141
    assert noise_marks(tight) == [False, True]
    assert noise_marks([(1, 0.9, math.nan)]) == [False]


def test_a_retraining_trial_unwraps_its_config_values():
    values = {"model.channels": 8, "train.seed": 2}
    assert unwrap_params({"reseed": {"trial_id": "a", "params": values}}) == values
    assert unwrap_params(values) == values


@pytest.mark.slow
@pytest.mark.integration
def test_search_retrains_its_front_with_more_seeds_and_reports_the_spread(tmp_path):
    from test_tuning import _search

    out = tmp_path / "rs"
    p = _search("--config", str(CONFIGS / "smoke.yaml"), "--output", str(out),
                "search.num_trials=3", "search.reseed=2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    front = [r for r in rows if r["pareto"]]
    assert front and len(rows) == 3  # the retrainings are not trials of the search
    for r in front:
        assert r[SEEDS] == 2 and 0 <= r[TEST_SD] <= 1
        # The mean includes the search's own run: the other one is 2 x mean - that.
        other = 2 * r[TEST_MEAN] - r[M.TEST_ACCURACY]
        assert 0 <= other <= 1 and r[TEST_SD] == pytest.approx(
            abs(other - r[M.TEST_ACCURACY]) / math.sqrt(2), abs=1e-9)
    assert sum(r[WITHIN_NOISE] for r in front) <= len(front) - 1
    report = (out / "report.md").read_text()
    assert "test acc over seeds" in report and "(2 seeds)" in report
    assert (out / "reseed").is_dir()
