"""The noise-aware front (search.reseed): the within-noise rule, and a search that retrains
its front with another seed and reports mean and spread."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from distopt import metrics as M
from distopt.config import load_config
from distopt.data import load_splits
from distopt.orchestration.reseed import noise_marks
from distopt.orchestration.trial_params import unwrap_params
from distopt.results.trials import SEEDS, TEST_MEAN, TEST_SD, WITHIN_NOISE
from distopt.training import evaluate_artifact

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
    report = (out / "report.md").read_text()
    assert "test acc over seeds" in report and "(2 seeds)" in report
    # Each retraining trained with another seed: training is deterministic for a seed, so a
    # retraining with the same one would have written the very file of its front model.
    retrained = [(final.parent / M.ARTIFACT_FILE).read_bytes()
                 for final in (out / "reseed").rglob(M.METRICS_FILE)]
    assert len(retrained) == len(front)
    assert not {(out / r["artifact"]).read_bytes() for r in front} & set(retrained)
    # The spread is of the two files' test accuracies, each measured here on its own.
    splits = load_splits(load_config(out / "config.yaml").data)
    others = [evaluate_artifact(data, splits, "test")[M.TEST_ACCURACY] for data in retrained]
    for r in front:
        own = evaluate_artifact((out / r["artifact"]).read_bytes(), splits,
                                "test")[M.TEST_ACCURACY]
        assert own == r[M.TEST_ACCURACY] and r[SEEDS] == 2
        assert any(r[TEST_MEAN] == pytest.approx((own + o) / 2, abs=1e-12) and
                   r[TEST_SD] == pytest.approx(abs(own - o) / math.sqrt(2), abs=1e-12)
                   for o in others), (r[TEST_MEAN], r[TEST_SD], own, others)
    assert sum(r[WITHIN_NOISE] for r in front) <= len(front) - 1
