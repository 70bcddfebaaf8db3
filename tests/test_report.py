from __future__ import annotations

import json
import math

import pytest

from distopt import metrics as M
from distopt.config import load_config
from distopt.orchestration.collect import _trial_config_json
from distopt.results.objectives import hypervolume_curve
from distopt.results.report import verdict

from conftest import CONFIGS


def test_verdict_from_the_gap():
    assert verdict(0.99, 0.95).startswith("overfits (gap +0.040)")
    assert verdict(0.90, 0.95).startswith("underfits (gap -0.050)")
    assert verdict(0.96, 0.95).startswith("balanced")
    assert verdict(math.nan, 0.9) == "unknown"


def test_trial_config_json_applies_the_sampled_values_and_overrides():
    cfg = load_config(CONFIGS / "mnist_cnn.yaml")
    full = json.loads(_trial_config_json(cfg, {"model.channels": 8, "train.lr": 0.003}))
    assert full["model"]["channels"] == 8 and full["train"]["lr"] == 0.003
    assert full["train"]["epochs"] == 6  # search.trial_overrides applied (the config says 5)
    # An invalid sampled value is still recorded, unvalidated, for the failed trial's row.
    bad = json.loads(_trial_config_json(cfg, {"model.blocks": 5}))
    assert bad["model"]["blocks"] == 5


def test_hypervolume_curve_never_decreases_and_skips_failed():
    cfg = load_config(CONFIGS / "smoke.yaml")
    rows = [
        {"trial_number": 0, "status": "COMPLETE", M.VAL_ACCURACY: 0.5, M.SIZE_BYTES: 1e4},
        {"trial_number": 1, "status": "FAILED", M.VAL_ACCURACY: math.nan, M.SIZE_BYTES: math.nan},
        {"trial_number": 2, "status": "COMPLETE", M.VAL_ACCURACY: 0.9, M.SIZE_BYTES: 1e3},
        {"trial_number": 3, "status": "COMPLETE", M.VAL_ACCURACY: 0.4, M.SIZE_BYTES: 1e5},
    ]
    xs, ys = hypervolume_curve(rows, cfg)
    assert xs == [0, 1, 2, 3]
    assert ys[0] == ys[1] and ys[2] > ys[1] and ys[3] == pytest.approx(ys[2])


def test_sampled_duplicates_become_rows_naming_the_trial_or_child_they_repeat(tmp_path):
    """A study as a search leaves it: a trained trial (its Tune id recorded), one of its
    children, and two sampled duplicates told their results. trials.parquet gets a DUPLICATE
    row for each, naming the original (``<id>`` or ``<id>-c<i>``), with no metrics of its own."""
    import optuna

    from distopt.orchestration.collect import _duplicate_rows
    from distopt.results.paths import SearchPaths
    from distopt.results.trials import DUPLICATE
    from distopt.storage import Location

    cfg = load_config(CONFIGS / "mnist_cnn.yaml")
    loc = Location(str(tmp_path))
    study = optuna.create_study(study_name=cfg.name, storage=SearchPaths(loc).study_url,
                                directions=["maximize", "minimize"])
    dist = {"model.channels": optuna.distributions.CategoricalDistribution([4, 8])}
    make = optuna.trial.create_trial
    study.add_trial(make(params={"model.channels": 4}, distributions=dist, values=[0.9, 100],
                         user_attrs={"tune_trial_id": "abc12"}))
    study.add_trial(make(params={"model.channels": 8}, distributions=dist, values=[0.8, 50],
                         user_attrs={"parent": 0, "file": "child_1.dopt"}))
    study.add_trial(make(params={"model.channels": 4}, distributions=dist, values=[0.9, 100],
                         user_attrs={"duplicate_of": 0}))
    study.add_trial(make(params={"model.channels": 8}, distributions=dist, values=[0.8, 50],
                         user_attrs={"duplicate_of": 1}))
    template = {"trial_id": "abc12", "trial_number": 0, "status": "COMPLETE",
                M.VAL_ACCURACY: 0.9, M.SIZE_BYTES: 100.0, "pareto": True, "duplicate_of": ""}
    rows = _duplicate_rows(cfg, loc, [template])
    assert [(r["trial_id"], r["duplicate_of"], r["status"]) for r in rows] == [
        ("abc12-dup2", "abc12", DUPLICATE), ("abc12-c1-dup3", "abc12-c1", DUPLICATE)]
    assert rows[1]["param.model.channels"] == 8
    assert all(math.isnan(r[M.VAL_ACCURACY]) and math.isnan(r[M.SIZE_BYTES]) for r in rows)
    assert [r["trial_number"] for r in rows] == [1, 2]


def test_a_rebuilt_manifest_keeps_an_onnx_export_only_while_it_matches_its_file(tmp_path):
    import hashlib

    from distopt.results.report import _kept_exports

    dopt, onnx_file = tmp_path / "m.dopt", tmp_path / "onnx" / "m.onnx"
    onnx_file.parent.mkdir()
    dopt.write_bytes(b"model bytes")
    onnx_file.write_bytes(b"graph")
    info = {"file": "onnx/m.onnx", "source_sha256": hashlib.sha256(b"model bytes").hexdigest()}
    assert _kept_exports({"onnx": info}, tmp_path, dopt) == {"onnx": info}
    dopt.write_bytes(b"another model")  # re-trained: the export no longer describes it
    assert _kept_exports({"onnx": info}, tmp_path, dopt) == {}
    dopt.write_bytes(b"model bytes")
    onnx_file.unlink()
    assert _kept_exports({"onnx": info}, tmp_path, dopt) == {}
    assert _kept_exports({"onnx": {"file": "onnx/m.onnx"}}, tmp_path, dopt) == {}  # no hash
    assert _kept_exports({"onnx": None}, tmp_path, dopt) == {}


def test_the_byte_breakdown_cell_reads_the_four_parts_or_dashes_a_v1_file():
    from distopt.results.report import breakdown_cell
    from distopt.results.trials import BREAKDOWN

    assert breakdown_cell(dict(zip(BREAKDOWN, (104.0, 373.0, 215.0, 1369.0)))) == \
        "104 / 373 / 215 / 1,369"
    assert breakdown_cell({k: math.nan for k in BREAKDOWN}) == "-"  # v1: no exact split
    assert breakdown_cell({}) == "-"


def test_a_model_no_better_than_chance_is_flagged():
    from distopt.results.objectives import at_chance

    assert at_chance(0.105, 10, 6000) and at_chance(0.09, 10, 6000)
    assert not at_chance(0.115, 10, 6000)
    assert at_chance(0.115, 10, 100)  # 100 samples: 11.5% is within guessing's spread
    assert not at_chance(0.6, 2, 6000) and at_chance(0.51, 2, 1000)
    from distopt import metrics as M
    from distopt.results.objectives import at_chance_row

    assert at_chance_row({M.VAL_ACCURACY: 0.105, M.VAL_SAMPLES: 6000}, 10)
    assert not at_chance_row({M.VAL_ACCURACY: 0.105}, 10)  # older rows: never judged


def test_report_rebuilds_when_a_front_models_file_is_gone(tmp_path, caplog):
    """`distopt report` after a front model's .dopt was deleted: rebuilt, with a warning."""
    import logging

    from distopt.results.report import _artifact_digest

    logger = logging.getLogger("distopt.results.report")
    logger.addHandler(caplog.handler)  # on it directly: the CLI's setup stops propagation
    try:
        with caplog.at_level(logging.WARNING, logger="distopt.results.report"):
            assert _artifact_digest(tmp_path / "models" / "gone.dopt") == ""
    finally:
        logger.removeHandler(caplog.handler)
    assert "gone.dopt is missing" in caplog.text
