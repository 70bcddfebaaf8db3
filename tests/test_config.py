from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from distopt.config import (Config, ConfigError, bits_text, field_info, load_config,
                            parse_overrides, reference_markdown)
from distopt.orchestration.children import child_configs
from distopt.orchestration.teacher import distills, teacher_config
from distopt.training.dense_store import dense_key

from conftest import CONFIGS


# Ray cluster-launcher files (configs/clusters/) are validated by tests/test_cluster.py.
@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("**/*.yaml")
                                        if "provider" not in yaml.safe_load(p.read_text())),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    # Round trip: the dict form rebuilds the same config.
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_seed_config_is_the_seed_practice():
    cfg = load_config(CONFIGS / "mnist_cnn.yaml")
    assert (cfg.model.channels, cfg.model.blocks, cfg.model.dense_units) == (32, 2, 128)
    assert (cfg.augment.rotation, cfg.augment.shift, cfg.augment.shear, cfg.augment.zoom) == \
        (20, 0.1, 0.1, 0.1)
    assert cfg.train.optimizer == "adam"
    assert cfg.compress.prune.ratio == 0.5 and cfg.compress.finetune_epochs >= 1
    assert cfg.data.name == "mnist-mini"  # runs offline by default


def test_overrides_are_parsed_as_yaml_and_applied():
    ov = parse_overrides(["train.epochs=3", "compress.prune.ratio=0.9", "train.use_gpu=true",
                          "data.path=null", "data.mirrors=[http://a/, http://b/]"])
    assert ov == {"train.epochs": 3, "compress.prune.ratio": 0.9, "train.use_gpu": True,
                  "data.path": None, "data.mirrors": ["http://a/", "http://b/"]}
    cfg = load_config(CONFIGS / "mnist_cnn.yaml", ["train.epochs=3", "compress.prune.ratio=0.9"])
    assert cfg.train.epochs == 3 and cfg.compress.prune.ratio == 0.9


def test_config_is_frozen_and_with_overrides_validates():
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.train.epochs = 9  # type: ignore[misc]
    assert cfg.with_overrides({"train.lr": 0.01}).train.lr == 0.01
    with pytest.raises(ConfigError, match="train.lr"):
        cfg.with_overrides({"train.lr": -1.0})


def test_every_problem_is_reported_at_once_with_key_value_and_rule():
    with pytest.raises(ConfigError) as e:
        load_config(None, [
            "train.lr=-0.1", "compress.prune.ratio=1.0", "compress.quantize.bits=5",
            "model.blocks=many", "traain.epochs=3", "data.name=cifar", "train.use_gpu=maybe",
            "regularization.dropout=1.5", "augment.rotation=-5", "search.sampler=grid",
            "search.objectives=[[accuracy, max]]",
        ])
    text = str(e.value)
    expected = [
        "train.lr: got -0.1 (float); must be > 0",
        "compress.prune.ratio: got 1.0 (float); must be >= 0 and < 1",
        "compress.quantize.bits: got 5 (int); must be one of 32, 16, 8, 4, 3, 2",
        "model.blocks: got 'many' (str); must be an integer",
        "traain: unknown key",
        "data.name: got 'cifar' (str); must be one of 'mnist-mini', 'mnist', 'parquet'",
        "train.use_gpu: got 'maybe' (str); must be true or false",
        "regularization.dropout: got 1.5 (float)",
        "augment.rotation: got -5 (int); must be >= 0",
        "search.sampler: got 'grid'",
    ]
    for line in expected:
        assert line in text, line
    assert len(e.value.problems) >= len(expected)


def test_cross_field_rules():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.name=parquet", "model.blocks=5",
                           "search.objectives=[[val_accuracy, min], [bogus, max]]"])
    text = str(e.value)
    assert "data.name 'parquet' needs the training file(s)" in text
    assert "model.blocks: got 5" in text and "shrinks to nothing" in text
    assert "val_accuracy is better when maximized" in text
    assert "got metric 'bogus'" in text


def test_missing_data_path_is_named():
    with pytest.raises(ConfigError, match="path '/no/such/dir' does not exist"):
        load_config(None, ["data.name=mnist", "data.path=/no/such/dir"])


def test_search_space_rules():
    space = {
        "train.lr": {"low": 0.0, "high": 0.1, "log": True},
        "model.channels": {"low": 64, "high": 8},
        "model.nope": {"choices": [1, 2]},
        "compress.quantize.bits": {"choices": [8, 5]},
        "model.dense_units": {"low": 16, "high": 256, "step": 2.5},
        "train.optimizer": {"low": 1, "high": 2},
        "regularization.l1": {"low": 0, "high": 1, "bins": 3},
    }
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"search": {"space": space}})
    text = str(e.value)
    assert "search.space.train.lr: a log range needs low > 0, but got low=0.0" in text
    assert "search.space.model.channels: low <= high must hold, but got (low=64, high=8)" in text
    assert "search.space.model.nope: not a config key that can be searched" in text
    assert "search.space.compress.quantize.bits.choices[1]: got 5 (int)" in text
    assert "model.dense_units is an integer, so step must be an integer" in text
    assert "train.optimizer is not numeric" in text
    assert "unknown entries ['bins']" in text


def test_valid_search_space_passes():
    cfg = Config.from_dict({"search": {"space": {
        "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "model.channels": {"low": 8, "high": 32, "step": 8},
        "compress.quantize.bits": {"choices": [4, 8]}}}})
    assert set(cfg.search.space) == {"train.lr", "model.channels", "compress.quantize.bits"}


def test_presets_fill_and_explicit_keys_override():
    cfg = load_config(None, ["model.preset=seed_cnn", "model.dense_units=64"])
    assert (cfg.model.channels, cfg.model.blocks, cfg.model.dense_units) == (32, 2, 64)


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be key=value"):
        load_config(None, ["train.epochs"])


def test_objectives_must_use_each_metrics_own_direction():
    load_config(None, ["search.objectives=[[val_accuracy, max], [latency_ms, min]]"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["search.objectives=[[val_accuracy, min], [size_bytes, max]]"])
    text = str(e.value)
    assert "got direction 'min' for val_accuracy; val_accuracy is better when maximized" in text
    assert "got direction 'max' for size_bytes; size_bytes is better when minimized" in text


def test_reference_lists_every_key():
    import dataclasses
    import typing

    ref = reference_markdown()

    def leaves(cls: type, prefix: str = ""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    keys = list(leaves(Config))
    assert len(keys) > 60 and "train.early_stop_patience" in keys
    assert "compress.prune.ratio" in keys and "compress.cluster.k" in keys
    missing = [k for k in keys if f"`{k}`" not in ref]
    assert missing == []


def test_bad_config_exits_2_before_ray_starts(tmp_path):
    code = ("import sys; from distopt.cli import main; "
            "rc = main(['train', '--output', sys.argv[1], 'train.lr=0', 'compress.quantize.bits=7']);"
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "train.lr: got 0" in p.stderr and "compress.quantize.bits: got 7" in p.stderr
    assert "NO_RAY" in p.stdout
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    from distopt.cli import main

    assert main(["train", "--output", str(out)]) == 2
    assert main(["train", "--output", str(out), "--resume", "--overwrite"]) == 2
    assert main(["search", "--config", str(CONFIGS / "smoke.yaml"), "--output", str(out)]) == 2
    assert (out / "metrics.json").read_text() == "{}"  # nothing touched


def test_relative_data_paths_become_absolute(tmp_path, monkeypatch):
    """Ray workers run in another directory: a path typed relative to the shell must not be
    re-read relative to theirs."""
    (tmp_path / "mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.name=mnist", "data.path=mnist", "data.cache_dir=cache"])
    assert cfg.data.path == str(tmp_path / "mnist")
    assert cfg.data.cache_dir == str(tmp_path / "cache")
    # Rebuilt in a worker from its dict form, no filesystem check runs (the path may only
    # exist on the worker's node).
    from distopt.config import Config

    assert Config.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"],
                                                        "path": "/only/on/workers"}})


def test_sequence_rules_name_the_conflicting_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.name=tokens-mini", "model.family=cnn", "augment.rotation=10",
                           "augment.token_dropout=0.1"])
    text = str(e.value)
    assert "data.kind: got 'image'; data.name 'tokens-mini' is 'tokens'" in text
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.name=tokens-mini", "data.kind=tokens", "model.family=mlp",
                           "augment.rotation=10"])
    text = str(e.value)
    assert "model.family: got 'mlp'; token sequences need 'rnn'" in text
    assert "augment: got {'rotation': 10.0}; image augmentation needs data.kind 'image'" in text
    with pytest.raises(ConfigError, match=r"augment: got \{'crop': 0.2\}; token augmentation "
                                          "needs data.kind 'tokens'"):
        load_config(None, ["model.preset=seed_rnn", "augment.crop=0.2"])
    with pytest.raises(ConfigError, match="data.kind: got 'tokens'; data.name 'mnist-mini' is "
                                          "'image'"):
        load_config(None, ["data.kind=tokens", "model.family=rnn"])
    with pytest.raises(ConfigError, match="augment.prob: got 0.5; it is the chance of an image"):
        load_config(None, ["model.preset=seed_rnn", "data.name=tokens-mini",
                           "data.kind=tokens", "augment.prob=0.5"])
    with pytest.raises(ConfigError, match="model.cell: got 'transformer'"):
        load_config(None, ["model.cell=transformer"])


def test_the_docs_reference_table_is_current():
    page = (CONFIGS.parent / "docs" / "config.md").read_text()
    assert reference_markdown() in page, "regenerate with `distopt config --reference`"


def test_type_errors_do_not_hide_cross_field_problems():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.blocks=many", "search.objectives=[[bogus, max]]",
                           "data.name=mnist", "data.path=/no/such/dir", "train.lr=-1"])
    text = str(e.value)
    for line in ("model.blocks: got 'many' (str); must be an integer",
                 "search.objectives[0]: got metric 'bogus'",
                 "data: path '/no/such/dir' does not exist",
                 "train.lr: got -1 (int); must be > 0"):
        assert line in text, line
    # A bad value is reported once, not again by the rules that read it.
    assert "shrinks to nothing" not in text and len(e.value.problems) == 4


def test_compression_options_that_would_do_nothing_are_rejected():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["compress.quantize.qat=true", "compress.quantize.bits=32",
                           "compress.prune.schedule=gradual", "compress.prune.kind=structured"])
    text = str(e.value)
    assert "compress.quantize.qat: got true with bits 32" in text
    assert "compress.prune.schedule: got 'gradual' with kind 'structured'" in text
    with pytest.raises(ConfigError, match="needs bits < 32 and fine-tune epochs"):
        load_config(None, ["compress.quantize.qat=true", "compress.finetune_epochs=0"])
    # QAT alone opens the fine-tune (no pruning needed): BitNetMCU's low-bit layers.
    alone = load_config(None, ["compress.quantize.qat=true", "compress.prune.ratio=0",
                               "compress.quantize.bits=4", "compress.finetune_epochs=2"])
    assert alone.compress.fine_tunes
    load_config(None, ["compress.quantize.qat=true", "compress.prune.schedule=gradual", "compress.quantize.bits=4",
                       "compress.prune.ratio=0.5"])


def test_integer_models_need_integer_weights_and_an_integer_family():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["compress.quantize.activation_bits=8", "compress.quantize.bits=16"])
    assert ("compress.quantize.activation_bits: got 8 with weight bits [16], cluster.k 0, "
            "model.family 'cnn'; integer-only models need integer weights") in str(e.value)
    for bad in (["compress.quantize.bits_classifier=32"], ["compress.cluster.k=8"],
                ["model.family=rnn", "data.name=tokens-mini", "data.kind=tokens"],
                ["search.objectives=[[val_accuracy, max], [ort_latency_ms, min]]"]):
        with pytest.raises(ConfigError, match="activation_bits"):
            load_config(None, ["compress.quantize.activation_bits=8", *bad])
    with pytest.raises(ConfigError, match="compress.quantize.activation_bits: got 4"):
        load_config(None, ["compress.quantize.activation_bits=4"])
    cfg = load_config(None, ["compress.quantize.activation_bits=8", "compress.quantize.bits=2",
                             "compress.quantize.bits_first_conv=8"])
    assert cfg.compress.quantize.activation_bits == 8


OLD_FLAT = {"prune_ratio": 0.7, "prune_kind": "unstructured", "schedule": "gradual",
            "quant_bits": 4, "qat": True, "bits_first_conv": 8, "bits_conv": 4,
            "bits_dense": 2, "bits_classifier": 8, "clusters": 0}


def test_old_flat_compress_keys_load_as_each_methods_section(tmp_path):
    """Configs written before each compression method had its section (compress.prune_ratio,
    ...) load to the same config as the new layout: in YAML, as overrides, as search-space,
    trial-override and teacher-override keys."""
    new = {"finetune_epochs": 2, "prune": {"ratio": 0.7, "kind": "unstructured",
                                           "schedule": "gradual"},
           "quantize": {"bits": 4, "qat": True, "bits_first_conv": 8, "bits_conv": 4,
                        "bits_dense": 2, "bits_last_dense": None, "bits_classifier": 8,
                        "bits_embedding": None, "scales": "channel", "odd_levels": False,
                        "activation_bits": None},
           "cluster": {"k": 0}}
    old_file, new_file = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_file.write_text(yaml.safe_dump({"compress": {"finetune_epochs": 2, **OLD_FLAT}, "search": {
        "space": {"compress.prune_ratio": {"low": 0.1, "high": 0.9}, "model.channels": {
            "choices": [4, 8]}, "compress.clusters": {"choices": [0, 8]}},
        "trial_overrides": {"compress.quant_bits": 8}}}))
    new_file.write_text(yaml.safe_dump({"compress": new, "search": {
        "space": {"compress.prune.ratio": {"low": 0.1, "high": 0.9}, "model.channels": {
            "choices": [4, 8]}, "compress.cluster.k": {"choices": [0, 8]}},
        "trial_overrides": {"compress.quantize.bits": 8}}}))
    old, fresh = load_config(old_file), load_config(new_file)
    assert old == fresh and list(old.search.space) == list(fresh.search.space)
    assert old.to_dict()["compress"] == {**new, "finetune_lr_scale": 0.5,  # the new layout
                                         "finetune_schedule": "constant",
                                         "prune_rows": {"ratio": 0.0}}
    assert load_config(None, [f"compress.{k}={json.dumps(v)}" for k, v in OLD_FLAT.items()] +
                       ["compress.finetune_epochs=2"]).compress == fresh.compress
    assert fresh.with_overrides({"compress.quant_bits": 2}).compress.quantize.bits == 2
    teacher = load_config(None, ["train.teacher_overrides={compress.quant_bits: 16}"])
    assert teacher.train.teacher_overrides == {"compress.quantize.bits": 16}
    assert field_info("compress.clusters") == field_info("compress.cluster.k") is not None


def test_an_old_key_beside_its_new_name_is_refused_naming_both():
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"compress": {"prune_ratio": 0.5, "prune": {"ratio": 0.6}},
                          "search": {"space": {"compress.quant_bits": {"choices": [4, 8]},
                                               "compress.quantize.bits": {"choices": [2]}}}})
    text = str(e.value)
    assert "compress.prune_ratio: the old name of compress.prune.ratio, which is also given" \
        in text
    assert "search.space.compress.quant_bits: the old name of compress.quantize.bits" in text
    with pytest.raises(ConfigError, match=r"compress.prune.ratio: got 1.5"):
        load_config(None, ["compress.prune_ratio=1.5"])  # errors name the key as it is now


def test_bits_text_reads_either_layout():
    assert bits_text({"quant_bits": 4, "bits_first_conv": 8}) == "4 (first_conv 8)"
    assert bits_text(load_config(None, ["compress.quantize.bits=3",
                                        "compress.quantize.bits_classifier=8"]
                                 ).public_dict()["compress"]) == "3 (classifier 8)"


def test_one_dimensional_signals_need_conv1d_with_shape_c_1_l():
    sig = ["data.name=signals-mini", "data.shape=[3,1,128]", "data.num_classes=6"]
    cfg = load_config(None, sig + ["model.family=conv1d", "model.blocks=3",
                                   "model.kernel_size=7", "augment.shift=0.1"])
    assert cfg.model.family == "conv1d"
    with pytest.raises(ConfigError) as e:  # 2-D convolutions on a (1, 128) input
        load_config(None, sig)
    assert "the 1x128 input shrinks to nothing; for 1-D signals use model.family 'conv1d'" \
        in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.name=parquet", "data.path=x", "data.shape=[3,128,1]",
                           "model.family=conv1d"])
    assert "data.shape: got [3, 128, 1] with model.family 'conv1d'; 1-D signals are " \
        "[channels, 1, length]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, sig + ["model.family=conv1d", "augment.rotation=10"])
    assert "1-D signals take only augment.shift" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.name=signals-mini", "model.family=conv1d"])
    assert "signals-mini is (3, 1, 128) with 6 classes" in str(e.value)


def test_children_are_distinct_seeded_draws_of_the_compress_keys_only():
    space = ("search.space={compress.prune.ratio: {low: 0.0, high: 0.9, step: 0.1}, "
             "compress.quantize.bits: {choices: [4, 8, 32]}, compress.quantize.qat: {choices: [true, false]}, "
             "model.channels: {choices: [4, 8]}}")
    cfg = load_config(None, [space, "search.children=6", "compress.finetune_epochs=1"])
    children = child_configs(cfg)
    assert children == child_configs(cfg)  # the same on every rank and restart
    assert len(children) == 6
    seen = {(cfg.compress.prune.ratio, cfg.compress.quantize.bits, cfg.compress.quantize.qat)}
    for values, child in children:
        assert set(values) == {"compress.prune.ratio", "compress.quantize.bits", "compress.quantize.qat"}
        key = (child.compress.prune.ratio, child.compress.quantize.bits, child.compress.quantize.qat)
        assert key not in seen
        seen.add(key)
        assert child.compress.quantize.bits in (4, 8, 32)
        assert round(child.compress.prune.ratio * 10, 6) == round(child.compress.prune.ratio * 10)
        # Draws QAT cannot run (32 bits) were skipped.
        assert not child.compress.quantize.qat or child.compress.quantize.bits < 32
        assert child.model == cfg.model and child.train == cfg.train
    other = child_configs(load_config(None, [space, "search.children=6", "search.seed=1"]))
    assert [v for v, _ in other] != [v for v, _ in children]
    with pytest.raises(ConfigError, match="search.children: got 2 with no compress.. key"):
        load_config(None, ["search.space={model.channels: {choices: [4, 8]}}",
                           "search.children=2"])


def test_mixed_bit_widths_fall_back_to_quantize_bits_and_qat_needs_one_below_32():
    q = load_config(None, ["compress.quantize.bits=4", "compress.quantize.bits_first_conv=8",
                           "compress.quantize.bits_classifier=8"]).compress.quantize
    assert [q.bits_of(k) for k in ("first_conv", "conv", "dense", "classifier")] == \
        [8, 4, 4, 8]
    qat = ["compress.quantize.qat=true", "compress.prune.ratio=0.5", "compress.finetune_epochs=1",
           "compress.quantize.bits=32"]
    assert load_config(None, qat + ["compress.quantize.bits_dense=4"]).compress.quantize.qat
    with pytest.raises(ConfigError, match="compress.quantize.qat: got true with bits 32"):
        load_config(None, qat)
    with pytest.raises(ConfigError, match="compress.quantize.bits_conv"):
        load_config(None, ["compress.quantize.bits_conv=5"])


def test_a_teacher_is_needed_when_any_trial_distills_and_trains_densely_in_float():
    assert not distills(load_config(None))
    assert distills(load_config(None, ["train.distill_alpha=0.3"]))
    assert distills(load_config(None, ["search.space={train.distill_alpha: {choices: [0.0, 0.5]}}"]))
    assert distills(load_config(None, ["search.space={train.distill_alpha: {low: 0.0, high: 0.7}}"]))
    assert not distills(load_config(None, ["search.space={train.distill_alpha: {choices: [0.0]}}"]))
    assert distills(load_config(None, ["search.trial_overrides={train.distill_alpha: 0.5}"]))
    cfg = load_config(None, ["train.distill_alpha=0.5", "compress.prune.ratio=0.9",
                             "compress.quantize.bits=4", "compress.quantize.bits_classifier=8",
                             "search.children=2", "search.space={compress.quantize.bits: "
                             "{choices: [4, 8]}}",
                             "train.teacher_overrides={model.channels: 64, train.epochs: 3}"])
    teacher = teacher_config(cfg)
    assert teacher.model.channels == 64 and teacher.train.epochs == 3
    assert teacher.compress.quantize.bits == 32 and teacher.compress.prune.ratio == 0
    assert teacher.compress.quantize.layer_bits == {} and teacher.train.distill_alpha == 0
    assert teacher.search.children == 0 and not distills(teacher) and not teacher.search.space


def test_resize_sets_the_model_input_and_is_for_images_only():
    cfg = load_config(None, ["data.resize=16"])
    assert cfg.data.model_shape == (1, 16, 16) and cfg.data.shape == (1, 28, 28)
    with pytest.raises(ConfigError, match="the 8x8 input shrinks to nothing"):
        load_config(None, ["data.resize=8", "model.blocks=2"])
    with pytest.raises(ConfigError, match="data.resize: got 16 with data.kind 'tokens'"):
        load_config(None, ["data.name=tokens-mini", "data.kind=tokens", "model.family=rnn",
                           "data.resize=16"])


def test_dense_key_ignores_compression_and_search_settings_only():
    base = load_config(None)
    same = [["compress.prune.ratio=0.9", "compress.quantize.bits=4", "compress.finetune_epochs=3"],
            ["search.sampler=random", "search.final.seeds=3", "name=other"]]
    for overrides in same:
        assert dense_key(load_config(None, overrides)) == dense_key(base), overrides
    for overrides in (["train.seed=1"], ["train.lr=0.01"], ["model.channels=8"],
                      ["augment.rotation=5"], ["regularization.dropout=0.1"],
                      ["data.val_fraction=0.2"]):
        assert dense_key(load_config(None, overrides)) != dense_key(base), overrides


def test_one_search_space_entry_can_be_overridden_on_the_command_line():
    cfg = load_config(CONFIGS / "smoke.yaml", ["search.space.model.channels={choices: [4, 16]}"])
    assert cfg.search.space["model.channels"] == {"choices": [4, 16]}
    assert "compress.prune.ratio" in cfg.search.space  # the other entries stay


@pytest.mark.parametrize("key, reason", [
    ("train.seed", "select lucky seeds"), ("data.val_fraction", "another validation set"),
    ("data.name", "not comparable"), ("name", "names the experiment"),
])
def test_keys_that_are_not_model_choices_cannot_be_searched(key, reason):
    space = "{%s: {choices: [%s]}}" % (key, "0.1, 0.2" if key == "data.val_fraction" else
                                       "0, 1" if key == "train.seed" else "a, b")
    with pytest.raises(ConfigError, match=reason):
        load_config(CONFIGS / "smoke.yaml", [f"search.space={space}"])


def test_several_gpu_ranks_of_one_trial_must_not_share_a_gpu():
    with pytest.raises(ConfigError, match="NCCL refuses duplicate devices"):
        load_config(None, ["train.use_gpu=true", "train.num_workers=2",
                           "train.gpus_per_worker=0.5"])
    load_config(None, ["train.use_gpu=true", "train.num_workers=1", "train.gpus_per_worker=0.5"])


def test_the_default_configs_children_are_the_draws_they_were_before_new_keys_existed():
    """Pinned: the default search's children, as drawn before compress.cluster.k existed (a key
    added to the schema changes no earlier search's children while it holds its default)."""
    values = [v for v, _ in child_configs(load_config(CONFIGS / "mnist_cnn.yaml"))]
    assert values == [{"compress.prune.ratio": 0.12879870914908287, "compress.quantize.bits": 8},
                      {"compress.prune.ratio": 0.29834313863560896, "compress.quantize.bits": 8},
                      {"compress.prune.ratio": 0.21796756562632283, "compress.quantize.bits": 16}]
