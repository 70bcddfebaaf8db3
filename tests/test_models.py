from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from distopt import metrics as M
from distopt.config import load_config
from distopt.models import (ModelSpec, build_model, count_params, example_input, fold_batch_norm,
                            prunable_weights,
                            seed_cnn, seed_rnn, spec_from_config)

from conftest import CONFIGS


def test_seed_cnn_parameter_count_matches_keras():
    # Conv(1->32,3x3)=320, Conv(32->64,3x3)=18,496, Dense(1600->128)=204,928, Dense(128->10)=1,290
    assert count_params(build_model(seed_cnn())) == 225_034


def test_seed_config_builds_the_seed_cnn():
    spec = spec_from_config(load_config(CONFIGS / "mnist_cnn.yaml"))
    assert spec.conv_channels == (32, 64) and spec.dense_units == (128,)
    assert count_params(build_model(spec)) == 225_034


def test_families_forward_shapes():
    for overrides in (["model.family=mlp", "model.blocks=2", "model.dense_units=300"],
                      ["model.channels=8", "model.blocks=3", "model.dense_layers=0"],
                      ["model.channels=4", "model.blocks=1", "model.kernel_size=5"]):
        spec = spec_from_config(load_config(None, overrides))
        out = build_model(spec)(torch.zeros(3, 1, 28, 28))
        assert out.shape == (3, 10)


def test_spec_round_trips_through_dict():
    spec = seed_cnn(dropout=0.25)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_models_data_compression_and_the_loop_import_nothing_of_ray_or_optuna():
    code = ("import sys, distopt.models, distopt.data, distopt.compress, distopt.training, "
            "distopt.config, distopt.pareto, distopt.augment\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_seed_rnn_parameter_count_matches_keras_arithmetic():
    # Keras: Embedding 5000*128 = 640,000; SimpleRNN(128) on 128 inputs = 128*128 + 128*128 + 128
    # = 32,896, twice; Dense(128->10) = 1,290: 707,082. PyTorch cells add a second bias (b_hh).
    # 707,082 is the total Keras' model.summary() prints for the seed RNN.
    assert count_params(build_model(seed_rnn())) - 2 * 128 == 707_082
    # Without the embedding, on 28 rows of 28 pixels: the first layer has 28 inputs.
    assert count_params(build_model(seed_rnn(tokens=False))) == \
        (28 * 128 + 128 * 128 + 256) + (128 * 128 + 128 * 128 + 256) + 1_290


def test_rnn_config_builds_the_seed_rnn_and_cells_forward():
    cfg = load_config(None, ["data.name=tokens-mini", "data.kind=tokens", "model.preset=seed_rnn"])
    spec = spec_from_config(cfg)
    assert spec == seed_rnn(tokens=True)
    for cell in ("rnn", "gru", "lstm"):
        for tokens in (True, False):
            s = dataclasses.replace(seed_rnn(tokens), cell=cell, rnn_units=(16, 8),
                                    dense_units=(12,))
            x = example_input(s, 3) + (torch.randint(1, 5000, (3, 64)) if tokens else 0)
            assert build_model(s)(x).shape == (3, 10)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_rnn_reads_image_rows_in_order():
    """Sequential MNIST: step t sees pixel row t, so flipping rows changes the output."""
    torch.manual_seed(0)
    model = build_model(seed_rnn(tokens=False)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x.flip(2)))
        # A change in the last row alone still reaches the output (the last step is read).
        y = x.clone()
        y[:, :, -1] += 1
        assert not torch.allclose(model(x), model(y))


def test_prunable_weights_cover_recurrent_and_embedding_matrices():
    names = {n: axis for n, _, axis in prunable_weights(build_model(seed_rnn()))}
    assert names == {"embedding.weight": 1, "recurrent.0.weight_ih_l0": 0,
                     "recurrent.0.weight_hh_l0": 0, "recurrent.1.weight_ih_l0": 0,
                     "recurrent.1.weight_hh_l0": 0, "classifier.2.weight": 0}


def test_gap_head_and_batch_norm_shapes():
    cfg = load_config(None, ["model.channels=8", "model.blocks=3", "model.head=gap",
                             "model.batch_norm=true", "model.dense_layers=0"])
    spec = spec_from_config(cfg)
    model = build_model(spec)
    assert spec.head == "gap" and spec.batch_norm
    assert model(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    # GAP: the classifier sees one value per channel of the last block (32), not 32 x 1 x 1
    # by accident of the input size: 8 -> 16 -> 32 channels, classifier 32 x 10.
    assert model.classifier[-1].weight.shape == (10, 32)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("block", ["plain", "same", "separable", "depthwise", "bitnet"])
def test_folding_batch_norm_is_exact_in_eval_mode(block):
    torch.manual_seed(0)
    spec = dataclasses.replace(seed_cnn(), conv_channels=(8, 8 if block in ("depthwise", "bitnet")
                                                               else 16),
                               batch_norm=True, head="gap", dense_units=(), block=block)
    model = build_model(spec)
    x = torch.randn(64, 1, 28, 28)
    model.train()
    for _ in range(3):  # give the BNs non-trivial running statistics
        model(x * 3 + 1)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    model.eval()
    folded = fold_batch_norm(model)
    assert not folded.spec.batch_norm
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_conv1d_convolves_and_pools_along_the_length_only():
    spec = ModelSpec("conv1d", (3, 1, 64), 6, (4, 8), (10,), 5)
    model = build_model(spec)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 5), (1, 5)]
    assert spec.conv_out_side() == (1, 13)  # 64 -> 60 -> 30 -> 26 -> 13
    assert model(torch.zeros(2, 3, 1, 64)).shape == (2, 6)
    # A time shift of the input by 4 steps (one pooled step of the last block) moves the
    # last feature map by one column: the features are translation-equivariant along L.
    x = torch.randn(1, 3, 1, 64)
    shifted = torch.roll(x, 4, dims=3)
    with torch.no_grad():
        a, b = model.features(x), model.features(shifted)
    torch.testing.assert_close(a[..., :-2], b[..., 1:-1])


def test_layer_kinds_name_first_conv_other_convs_hidden_dense_and_classifier():
    from distopt.models import layer_kinds

    cnn = build_model(ModelSpec("cnn", (1, 28, 28), 10, (4, 8, 8), (16, 12), 3))
    kinds = layer_kinds(cnn)
    assert list(kinds.values()) == ["first_conv", "conv", "conv", "dense", "last_dense",
                                    "classifier"]
    assert list(kinds) == [n for n, _, _ in prunable_weights(cnn)]
    rnn = build_model(seed_rnn(tokens=True))
    assert set(layer_kinds(rnn).values()) == {"embedding", "dense", "classifier"}
    assert layer_kinds(rnn)["classifier.2.weight"] == "classifier"
    assert layer_kinds(rnn)["embedding.weight"] == "embedding"


def test_same_blocks_keep_the_map_and_separable_blocks_are_depthwise_then_pointwise():
    """'same' convs shrink the map by pooling only, so three blocks fit a 16x16 input that
    'valid' convs shrink to nothing; separable blocks (after a full first conv) are a k x k
    depthwise conv (one filter per channel) and a 1 x 1 pointwise conv, with about k*k times
    fewer conv weights."""
    base = ModelSpec("cnn", (1, 16, 16), 10, (8, 16, 32), (16,), 3)
    assert base.conv_out_side() == (0, 0)
    same = dataclasses.replace(base, block="same")
    sep = dataclasses.replace(base, block="separable")
    assert same.conv_out_side() == sep.conv_out_side() == (2, 2)
    x = torch.randn(2, 1, 16, 16)
    for spec in (same, sep):
        assert build_model(spec)(x).shape == (2, 10)
    convs = [m for m in build_model(sep).features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.groups, c.kernel_size, c.padding, c.bias is None) for c in convs] == \
        [(1, (3, 3), (1, 1), False), (8, (3, 3), (1, 1), True), (1, (1, 1), (0, 0), False),
         (16, (3, 3), (1, 1), True), (1, (1, 1), (0, 0), False)]
    conv_weights = lambda spec: sum(m.weight.numel() for m in build_model(spec).features  # noqa
                                    if isinstance(m, torch.nn.Conv2d))
    assert conv_weights(same) == 8 * 9 + 16 * 8 * 9 + 32 * 16 * 9
    assert conv_weights(sep) == 8 * 9 + (8 * 9 + 16 * 8) + (16 * 9 + 32 * 16)
    conv1d = ModelSpec("conv1d", (3, 1, 32), 4, (8, 8), (), 5, block="separable")
    assert build_model(conv1d)(torch.randn(2, 3, 1, 32)).shape == (2, 4)
    assert conv1d.conv_out_side() == (1, 8)


def test_bitnet_blocks_are_bitnetmcus_geometry_unpadded_and_first_block_unpooled():
    """BitNetMCU's CNN-16: conv 3x3 valid, depthwise 3x3 valid, pool, depthwise 3x3 valid,
    pool (16 -> 14 -> 12 -> 6 -> 4 -> 2: 64 features), 16,752 weights with its 96-96-10 head;
    the config builds it, and the checks accept an even kernel (no 'same' padding needed)."""
    from distopt.config import load_config
    from distopt.models import spec_from_config

    cfg = load_config(CONFIGS / "smoke.yaml", ["model.block=bitnet", "data.resize=16",
                                               "model.channels=16", "model.blocks=3",
                                               "model.dense_units=96", "model.dense_layers=2",
                                               "model.bias=false"])
    spec = spec_from_config(cfg)
    assert spec.conv_channels == (16, 16, 16) and spec.conv_out_side() == (2, 2)
    model = build_model(spec)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU",
                     "MaxPool2d"]
    assert all(m.padding == (0, 0) for m in model.features if isinstance(m, torch.nn.Conv2d))
    assert [m.groups for m in model.features if isinstance(m, torch.nn.Conv2d)] == [1, 16, 16]
    assert sum(p.numel() for p in model.parameters()) == 16_752
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    load_config(CONFIGS / "smoke.yaml", ["model.block=bitnet", "model.kernel_size=2"])


def test_bitnetmcus_cnn16_to_the_byte_tapered_dense_layers_with_their_own_bits():
    """model.dense_taper and compress.quantize.bits_last_dense: BitNetMCU's CNN-16 head,
    64 -> 96 (2-bit) -> 64 (4-bit) -> 10 (4-bit) after 8-bit convs, is its 5,360 bytes of
    packed weights exactly; a taper of 1 keeps every layer dense_units wide."""
    from distopt.compress import decode, device_report
    from distopt.config import load_config
    from distopt.models import layer_kinds, spec_from_config
    from distopt.training.compression import Compression

    cfg = load_config(CONFIGS / "bitnetmcu_cnn16.yaml")
    assert spec_from_config(cfg).dense_units == (96, 64)
    assert cfg.model.dense_widths(3) == (96, 64, 43)
    assert cfg.model.__class__(dense_units=32, dense_layers=3).dense_widths(3) == (32, 32, 32)
    lenet = build_model(spec_from_config(load_config(None, ["model.preset=lenet_300_100"])))
    assert lenet.spec.dense_units == (300, 100)  # Deep Compression's, now exact
    assert sum(p.numel() for p in lenet.parameters()) == 266_610
    torch.manual_seed(0)
    model = build_model(spec_from_config(cfg))
    assert list(layer_kinds(model).values())[-3:] == ["dense", "last_dense", "classifier"]
    compression = Compression(cfg.compress)
    bits = {n: c.bits for n, c in compression.codings(model).items()}
    assert list(bits.values()) == [8, 8, 8, 2, 4, 4]
    report = device_report(decode(compression.encode(model, {})))
    assert report["weight_flash_bytes"] == 5_360
    # Without bits_last_dense the layer takes bits_dense, as every hidden layer did before.
    q = dataclasses.replace(cfg.compress.quantize, bits_last_dense=None)
    assert q.bits_of("last_dense") == q.bits_of("dense") == 2


def test_depthwise_blocks_are_one_filter_per_channel_with_a_bias_and_keep_the_channels():
    """BitNetMCU's small CNNs: a full first conv, then k x k depthwise convs alone ('same',
    biased: nothing after them absorbs a bias), every block as wide as the first; the config's
    channel doubling does not apply, and a spec that changes width is refused by the model and
    by the decoder's spec check before anything is built."""
    from distopt.compress.spec_check import spec_problem

    cfg = load_config(CONFIGS / "smoke.yaml", ["model.block=depthwise", "data.resize=16",
                                               "model.blocks=3", "model.channels=6"])
    spec = spec_from_config(cfg)
    assert spec.block == "depthwise" and spec.conv_channels == (6, 6, 6)
    assert spec.conv_out_side() == (2, 2)
    model = build_model(spec)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.groups, c.in_channels, c.out_channels, c.padding, c.bias is None)
            for c in convs] == [(1, 1, 6, (1, 1), False), (6, 6, 6, (1, 1), False),
                                (6, 6, 6, (1, 1), False)]
    assert sum(c.weight.numel() for c in convs) == 6 * 9 + 2 * 6 * 9
    assert model.classifier[2].in_features == 6 * 2 * 2
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    wider = dataclasses.replace(spec, conv_channels=(6, 12, 12))
    with pytest.raises(ValueError, match="depthwise blocks keep the channels"):
        build_model(wider)
    as_stored = lambda s: json.loads(json.dumps(s.to_dict()))  # noqa: E731 (lists, as in a file)
    assert spec_problem(as_stored(wider)) == \
        "spec.conv_channels must all be equal with depthwise blocks"
    assert spec_problem(as_stored(spec)) is None
    conv1d = ModelSpec("conv1d", (3, 1, 32), 4, (8, 8), (), 5, block="depthwise")
    assert build_model(conv1d)(torch.randn(2, 3, 1, 32)).shape == (2, 4)


def test_layers_without_biases_are_configurable_checked_and_survive_structured_pruning():
    """model.bias false builds no bias anywhere (BitNetMCU's); the spec stores it only when
    off (files of biased models unchanged), families without the option and BatchNorm (which
    folds into a bias) refuse it, and structured pruning keeps a bias-free model bias-free."""
    from distopt.compress.pruning import structured_prune
    from distopt.config import ConfigError

    cfg = load_config(CONFIGS / "smoke.yaml", ["model.bias=false"])
    spec = spec_from_config(cfg)
    assert spec.bias is False and spec.to_dict()["bias"] is False
    assert "bias" not in dataclasses.replace(spec, bias=True).to_dict()
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    model = build_model(spec)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert model(torch.zeros(2, *spec.in_shape)).shape == (2, spec.num_classes)
    small = structured_prune(model, 0.5)
    assert small.spec.bias is False and small.spec.conv_channels != spec.conv_channels
    assert not [n for n, _ in small.named_parameters() if n.endswith("bias")]
    mlp = spec_from_config(load_config(None, ["model.family=mlp", "model.bias=false"]))
    assert not any(m.bias is not None for m in build_model(mlp).modules()
                   if isinstance(m, torch.nn.Linear))
    with pytest.raises(ConfigError, match="model.bias: got false with model.family 'rnn'"):
        load_config(None, ["model.preset=seed_rnn", "model.bias=false"])
    with pytest.raises(ConfigError, match="model.bias: got false with model.batch_norm true"):
        load_config(None, ["model.batch_norm=true", "model.bias=false"])


def test_block_kinds_are_configurable_and_checked(tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", ["model.block=separable", "data.resize=16",
                                               "model.blocks=3"])
    assert spec_from_config(cfg).block == "separable"
    from distopt.config import ConfigError
    with pytest.raises(ConfigError, match="odd kernel size"):
        load_config(CONFIGS / "smoke.yaml", ["model.block=same", "model.kernel_size=4"])
    for block in ("separable", "depthwise"):
        with pytest.raises(ConfigError, match="structured pruning removes whole channels"):
            load_config(CONFIGS / "smoke.yaml", [f"model.block={block}",
                                                 "compress.prune.kind=structured"])
    with pytest.raises(ConfigError, match="shrinks to nothing"):
        load_config(CONFIGS / "smoke.yaml", ["model.blocks=3", "data.resize=16"])


def test_every_family_the_config_names_is_registered_and_builds_its_own_spec():
    from distopt.config import BUILT_IN_FAMILIES, load_config
    from distopt.models import FAMILIES, family_of, spec_from_config

    assert set(FAMILIES) == {*BUILT_IN_FAMILIES, "external"}
    shapes = {"conv1d": ["data.name=signals-mini", "data.shape=[3, 1, 128]",
                         "data.num_classes=6"],
              "rnn": ["model.hidden_size=8", "model.blocks=1"],
              "recsys": ["data.name=clicks-mini", "data.kind=tabular", "data.num_classes=2",
                         "model.buckets=64", "model.embed_dim=4"]}
    for name in BUILT_IN_FAMILIES:
        cfg = load_config(None, [f"model.family={name}", "model.channels=4",
                                 "model.dense_units=8", *shapes.get(name, [])])
        spec = spec_from_config(cfg)
        assert spec.family == name and family_of(name) is FAMILIES[name]
        model = build_model(spec)
        assert model.spec == spec
        assert model(example_input(spec, 2)).shape == (2, cfg.data.num_classes)
    assert family_of("mypkg.models:TinyNet") is FAMILIES["external"]


def test_peak_ram_and_macs_of_the_seed_models_are_the_hand_counted_ones():
    from distopt.models.cost import activation_cost

    cnn = build_model(seed_cnn())
    got = activation_cost(cnn, cnn.spec)
    # The first max-pool reads 32 x 26 x 26 floats and writes 32 x 13 x 13: the largest pair.
    assert got[M.PEAK_RAM_BYTES] == 4 * (32 * 26 * 26 + 32 * 13 * 13)
    assert got[M.MACS] == 26 * 26 * 288 + 11 * 11 * 18_432 + 204_800 + 1_280 == \
        got[M.NONZERO_MACS]
    assert activation_cost(cnn, cnn.spec, activation_bytes=1)[M.PEAK_RAM_BYTES] == \
        got[M.PEAK_RAM_BYTES] // 4
    rnn = build_model(seed_rnn())
    got = activation_cost(rnn, rnn.spec)
    # The first layer reads 64 x 128 embeddings and writes 64 x 128 outputs + its last state;
    # each step of each layer multiplies 128 x 128 input and 128 x 128 recurrent weights.
    assert got[M.PEAK_RAM_BYTES] == 4 * (64 * 128 + 64 * 128 + 128)
    assert got[M.MACS] == 2 * 64 * (128 * 128 * 2) + 1_280
    assert rnn.training  # its mode is left as it was


def test_depthwise_convs_count_their_groups_and_in_place_relus_add_no_buffer():
    from distopt.models.cost import activation_cost

    spec = ModelSpec("cnn", (1, 16, 16), 10, (4, 8), (), 3, block="separable")
    got = activation_cost(build_model(spec), spec)
    # same convs: 16x16 -> pool 8x8; depthwise 3x3 on 4 channels + pointwise 4->8 at 8x8.
    assert got[M.MACS] == 16 * 16 * 36 + 8 * 8 * (4 * 9 + 32) + 8 * 4 * 4 * 10
    assert got[M.PEAK_RAM_BYTES] == 4 * (1 * 16 * 16 + 4 * 16 * 16)  # the first conv
