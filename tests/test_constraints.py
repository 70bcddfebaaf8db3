"""Hard budgets (search.constraints, distopt.constraints): their meaning and errors, the
costs known before training, and a search that answers over-budget configurations without
training them and keeps every model over a budget off the front."""

from __future__ import annotations

import json
import math

import optuna
import pyarrow.parquet as pq
import pytest

from distopt import metrics as M
from distopt.config import ConfigError, load_config
from distopt.constraints import Bound, bounds, over_budget, problems, violations

from conftest import CONFIGS, TINY


def test_a_number_is_an_upper_bound_and_a_mapping_gives_min_and_max():
    got = bounds({"flash_bytes": 16000, "val_accuracy": {"min": 0.9}, "macs": {"min": 1,
                                                                             "max": 2e6}})
    assert got == [Bound("flash_bytes", None, 16000.0), Bound("val_accuracy", 0.9, None),
                   Bound("macs", 1.0, 2e6)]
    m = {"flash_bytes": 20000, "val_accuracy": 0.95, "macs": 1e6}
    assert violations(m, got) == [pytest.approx(0.25), pytest.approx(-0.95 / 0.9 + 1), -0.5]
    assert over_budget(m, got) == "flash_bytes 20,000 (budget flash_bytes <= 16,000)"
    assert over_budget({**m, "flash_bytes": 100}, got) == ""
    # A metric not measured counts as outside its bound: never on the front by accident.
    assert violations({}, got[:1]) == [1.0] and "unknown" in over_budget({}, got[:1])


def test_bad_budgets_are_config_errors_naming_key_value_and_rule():
    assert problems({"flash": 1}) == [
        "search.constraints.flash: unknown metric; one of " + ", ".join(
            (*M.OBJECTIVES, M.PARAMS))]
    assert problems({"macs": -1}) == ["search.constraints.macs.max: got -1; must be a number "
                                      ">= 0"]
    assert problems({"macs": {"min": 5, "max": 1}})[0].endswith("no model could be within it")
    assert "a mapping with min and/or max" in problems({"macs": {"below": 3}})[0]
    assert "test_accuracy" in problems({"test_accuracy": {"min": 0.9}})[0]  # never selected on
    with pytest.raises(ConfigError, match="search.constraints.flash_bytes.max: got True"):
        load_config(None, ["search.constraints={flash_bytes: true}"])


def test_the_searcher_tells_the_sampler_each_budgets_violation(tmp_path):
    """What the sampler learns feasibility from: each told trial's constraint values (named
    by metric), its duplicates' and its children's too."""
    from distopt.orchestration.tuning import _searcher
    from distopt.results.paths import SearchPaths
    from distopt.storage import Location

    cfg = load_config(CONFIGS / "smoke.yaml", ["search.constraints={flash_bytes: 5000, "
                                               "val_accuracy: {min: 0.5}}"])
    searcher = _searcher(cfg, SearchPaths(Location(str(tmp_path))))
    searcher.set_search_properties(None, None, {})
    config = searcher.suggest("t1")
    assert config
    children = json.dumps([{"params": {"compress.prune.ratio": 0.1, "compress.quantize.bits": 4},
                            "file": "child_0.dopt", "metrics": {
                                M.VAL_ACCURACY: 0.7, M.SIZE_BYTES: 900.0,
                                M.FLASH_BYTES: 4000.0}}])
    searcher.on_trial_complete("t1", {M.PHASE: "final", M.VAL_ACCURACY: 0.4,
                                      M.SIZE_BYTES: 1000.0, M.FLASH_BYTES: 6000.0,
                                      M.CHILDREN: children})
    trials = searcher._ot_study.trials
    assert trials[0].constraints == {"flash_bytes": pytest.approx(0.2),
                                     "val_accuracy": pytest.approx(0.2)}
    assert trials[1].constraints == {"flash_bytes": pytest.approx(-0.2),
                                     "val_accuracy": pytest.approx(-0.4)}


@pytest.mark.slow
def test_costs_known_before_training_are_those_of_the_trained_file(splits):
    from distopt.constraints import SPEC_METRICS
    from distopt.training import WorkerEnv, fit
    from distopt.training.budget import spec_costs

    for extra in ([], ["compress.prune.kind=structured", "compress.quantize.bits=4"],
                  ["compress.quantize.bits=4", "compress.quantize.activation_bits=8"]):
        cfg = load_config(None, TINY + ["model.channels=4", "model.dense_units=16", *extra])
        out = fit(cfg, WorkerEnv(), lambda *a, **k: None, splits=splits)
        before = spec_costs(cfg)
        assert {k: before[k] for k in SPEC_METRICS} == {
            k: float(out["metrics"][k]) for k in SPEC_METRICS}, extra


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_answers_over_budget_configurations_without_training_them(tmp_path):
    """Smoke search with a 5,000-byte flash budget: half of its architectures are over it
    (8 channels at 8 bits; flash known before training). Those are answered at once (status
    OVER_BUDGET, no training time), the sampler is told how far over they are, and no model
    over the budget is on the front; report.md states the budget."""
    from test_tuning import _search, _study

    out = tmp_path / "budget"
    p = _search("--config", str(CONFIGS / "smoke.yaml"), "--output", str(out),
                "search.num_trials=8", "search.sampler=nsga2", "search.seed=3",
                "search.constraints={flash_bytes: 5000}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    over = [r for r in rows if r["status"] == "OVER_BUDGET"]
    trained = [r for r in rows if r["status"] == "COMPLETE"]
    assert over and trained, [(r["status"], r[M.FLASH_BYTES]) for r in rows]
    for r in over:
        assert r[M.FLASH_BYTES] > 5000 and "flash_bytes" in r[M.OVER_BUDGET]
        assert math.isnan(r[M.TRAIN_SECONDS]) and not r["pareto"]
    assert all(r[M.FLASH_BYTES] <= 5000 for r in rows if r["pareto"])
    assert all(bool(r[M.OVER_BUDGET]) == (r[M.FLASH_BYTES] > 5000) for r in trained)
    told = [t.constraints for t in _study(out).trials
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert told and all(set(c) == {"flash_bytes"} for c in told)
    assert any(c["flash_bytes"] > 0 for c in told) and any(c["flash_bytes"] <= 0 for c in told)
    assert "budgets (search.constraints): flash_bytes <= 5,000" in (out / "report.md").read_text()
    assert json.loads(rows[0]["config_json"])["search"]["constraints"] == {"flash_bytes": 5000}
