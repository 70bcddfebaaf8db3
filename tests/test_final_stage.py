"""The final stage (search.final): which front configurations it chooses and how it trains
them, the within-noise rule, and searches that retrain their front with other seeds (the
search's run the first) or at another length, and resume the stage."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from distopt import metrics as M
from distopt.config import load_config
from distopt.data import load_splits
from distopt.config import ConfigError
from distopt.orchestration.final_stage import FINAL_DIR, final_jobs, noise_marks, select
from distopt.orchestration.trial_params import unwrap_params
from distopt.results.trials import FINAL_EPOCHS, FINAL_SIZE, SEEDS, TEST_MEAN, TEST_SD, WITHIN_NOISE
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


def _row(tid: str, val: float, size: int, flash: int, pareto: bool = True) -> dict:
    return {"trial_id": tid, "pareto": pareto, M.VAL_ACCURACY: val, M.SIZE_BYTES: size,
            M.FLASH_BYTES: flash, M.TEST_ACCURACY: 1.0 - val}  # test accuracy must not choose


ROWS = [_row("a", 0.95, 1000, 3000), _row("b", 0.97, 2000, 5000), _row("c", 0.985, 4000, 9000),
        _row("d", 0.99, 900, 2000, pareto=False), _row("e", 0.98, 3000, 5300)]


def test_the_final_stage_chooses_the_whole_front_or_the_best_on_validation_under_each_budget():
    whole = load_config(CONFIGS / "smoke.yaml", ["search.final.seeds=3"]).search.final
    assert [r["trial_id"] for r in select(ROWS, whole)] == ["a", "b", "e", "c"]
    cfg = load_config(CONFIGS / "smoke.yaml", [
        "search.final.seeds=3", "search.final.select.metric=flash_bytes",
        "search.final.select.budgets=[1000, 3232, 5360, 5300, 100000]"]).search.final
    # 1000: nothing fits (logged); 3232: a; 5360: e (0.98 beats b's 0.97; the off-front d and
    # test accuracy play no part); 5300: e again (trained once); 100000: c.
    assert [r["trial_id"] for r in select(ROWS, cfg)] == ["a", "e", "c"]
    tie = [_row("x", 0.97, 1, 100), _row("y", 0.97, 1, 90)]
    assert [r["trial_id"] for r in select(tie, cfg)] == ["y"]  # equal accuracy: the smaller


def test_a_log_loss_search_chooses_the_lowest_log_loss_under_each_budget():
    rows = [{**_row("a", 0.95, 1000, 3000), M.VAL_LOGLOSS: 0.40},
            {**_row("b", 0.97, 2000, 5000), M.VAL_LOGLOSS: 0.38},
            {**_row("c", 0.96, 1900, 5000), M.VAL_LOGLOSS: 0.35}]  # worse accuracy, better loss
    cfg = load_config(CONFIGS / "smoke.yaml", [
        "search.final.seeds=3", "search.final.select.budgets=[2500]"]).search.final
    assert [r["trial_id"] for r in select(rows, cfg, (M.VAL_LOGLOSS, "min"))] == ["c"]
    assert [r["trial_id"] for r in select(rows, cfg)] == ["b"]  # by accuracy: b


def test_final_runs_take_other_seeds_and_the_final_length():
    chosen = [{"trial_id": "a", "params": {"model.channels": 8}}]
    same_length = load_config(CONFIGS / "smoke.yaml", ["search.final.seeds=3", "train.seed=5"])
    # The search's run is the first seed: two more, seeds 6 and 7.
    assert final_jobs(same_length, chosen) == [
        {"trial_id": "a", "params": {"model.channels": 8, "train.seed": s}} for s in (6, 7)]
    longer = load_config(CONFIGS / "smoke.yaml", ["search.final.seeds=2",
                                                  "search.final.epochs=30", "train.seed=5"])
    # Longer runs: every seed is the stage's own, the trial's seed first.
    assert final_jobs(longer, chosen) == [
        {"trial_id": "a", "params": {"model.channels": 8, "train.epochs": 30, "train.seed": s}}
        for s in (5, 6)]
    one = load_config(CONFIGS / "smoke.yaml", ["search.final.epochs=30"])
    assert one.search.final.active and len(final_jobs(one, chosen)) == 1
    assert not load_config(CONFIGS / "smoke.yaml", ["search.final.seeds=1"]).search.final.active


def test_search_reseed_is_the_old_name_of_the_final_stages_seeds(tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", ["search.reseed=3"])
    assert cfg.search.final.seeds == 3 and cfg.search.final.epochs is None
    both = tmp_path / "both.yaml"
    both.write_text((CONFIGS / "smoke.yaml").read_text().replace(
        "search:\n", "search:\n  reseed: 3\n  final: {seeds: 2}\n", 1))
    with pytest.raises(ConfigError, match="search.reseed: the old name of search.final.seeds"):
        load_config(both)
    with pytest.raises(ConfigError, match="search.final.select.metric"):
        load_config(CONFIGS / "smoke.yaml", ["search.final.select.metric=val_accuracy"])
    with pytest.raises(ConfigError, match="search.final.select.budgets"):
        load_config(CONFIGS / "smoke.yaml", ["search.final.select.budgets=[0]"])


def test_a_retraining_trial_unwraps_its_config_values():
    values = {"model.channels": 8, "train.seed": 2}
    assert unwrap_params({"retrain": {"trial_id": "a", "params": values}}) == values
    assert unwrap_params(values) == values


@pytest.mark.slow
@pytest.mark.integration
def test_search_retrains_its_front_with_more_seeds_and_reports_the_spread(tmp_path):
    from test_tuning import _search

    out = tmp_path / "rs"
    p = _search("--config", str(CONFIGS / "smoke.yaml"), "--output", str(out),
                "search.num_trials=3", "search.final.seeds=2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    front = [r for r in rows if r["pareto"]]
    assert front and len(rows) == 3  # the retrainings are not trials of the search
    report = (out / "report.md").read_text()
    assert "final stage test acc" in report and "(2 seeds, 1 epochs)" in report
    # Each retraining trained with another seed: training is deterministic for a seed, so a
    # retraining with the same one would have written the very file of its front model.
    retrained = [(final.parent / M.ARTIFACT_FILE).read_bytes()
                 for final in (out / FINAL_DIR).rglob(M.METRICS_FILE)]
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


@pytest.mark.slow
@pytest.mark.integration
def test_final_stage_trains_the_budget_choices_longer_and_resumes_without_training_again(
        tmp_path):
    from test_tuning import _search

    out = tmp_path / "fs"
    p = _search("--config", str(CONFIGS / "smoke.yaml"), "--output", str(out),
                "search.num_trials=3", "search.final.epochs=2",
                "search.final.select.metric=flash_bytes",
                "search.final.select.budgets=[1000000000]")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    front = [r for r in rows if r["pareto"]]
    chosen = [r for r in rows if r[SEEDS]]
    # One budget above every model: the front's most accurate on validation, one run of 2
    # dense epochs (the trials trained 1), its test accuracy that run's own.
    assert len(chosen) == 1 and chosen[0] is max(front, key=lambda r: r[M.VAL_ACCURACY])
    r = chosen[0]
    assert r[FINAL_EPOCHS] == 2 and r[M.DENSE_EPOCHS] == 1 and math.isnan(r[TEST_SD])
    finals = list((out / FINAL_DIR).rglob(M.METRICS_FILE))
    assert len(finals) == 1
    data = (finals[0].parent / M.ARTIFACT_FILE).read_bytes()
    splits = load_splits(load_config(out / "config.yaml").data)
    assert r[TEST_MEAN] == evaluate_artifact(data, splits, "test")[M.TEST_ACCURACY]
    from distopt.compress import decode
    from distopt.compress.artifact import device_report
    assert r[FINAL_SIZE] == device_report(decode(data))[M.FLASH_BYTES]
    # Resumed, the finished stage is read back, not trained again.
    p = _search("--output", str(out), "--resume")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert list((out / FINAL_DIR).rglob(M.METRICS_FILE)) == finals
    assert (finals[0].parent / M.ARTIFACT_FILE).read_bytes() == data
    again = [x for x in pq.read_table(out / "trials.parquet").to_pylist() if x[SEEDS]]
    assert [x[TEST_MEAN] for x in again] == [r[TEST_MEAN]]
