"""Flash a device needs to run a decoded file in place (distopt.compress.flash): every count
checked against one worked out by hand from the architecture."""

from __future__ import annotations

import torch

from distopt import metrics as M
from distopt.compress import decode, device_report, encode
from distopt.compress.clustering import WeightClustering
from distopt.compress.coding import Codebook
from distopt.compress.flash import flash_bytes, tensor_flash
from distopt.compress.pruning import apply_masks, global_magnitude_masks
from distopt.models import ModelSpec, build_model, prunable_weights, seed_cnn

# The seed CNN: conv 1->32 (288 weights), conv 32->64 (18,432), dense 1600->128 (204,800),
# classifier 128->10 (1,280): 224,800 weights; 234 output channels (a scale and a bias each).
SEED_WEIGHTS, SEED_CHANNELS = 224_800, 32 + 64 + 128 + 10


def test_seed_cnn_flash_is_its_packed_weights_plus_float32_scales_and_biases():
    torch.manual_seed(0)
    model = build_model(seed_cnn())
    for bits in (8, 4, 3, 2):
        got = flash_bytes(decode(encode(model, bits)).tensors)
        assert got[M.WEIGHT_FLASH_BYTES] == sum(
            -(-n * bits // 8) for n in (288, 18_432, 204_800, 1_280)), bits
        assert got[M.FLASH_BYTES] == got[M.WEIGHT_FLASH_BYTES] + 2 * 4 * SEED_CHANNELS
    floats = flash_bytes(decode(encode(model, 32)).tensors)
    assert floats == {M.WEIGHT_FLASH_BYTES: 4 * SEED_WEIGHTS,  # no scales, no tables
                      M.FLASH_BYTES: 4 * SEED_WEIGHTS + 4 * SEED_CHANNELS,
                      M.EMBEDDING_FLASH_BYTES: 0}


def test_each_tensor_rounds_up_to_whole_bytes_and_embeddings_scale_per_column():
    assert tensor_flash({"name": "w", "shape": [1, 3], "bits": 3, "index": "dense"}) == (2, 4)
    assert tensor_flash({"name": "e.weight", "shape": [50, 5], "bits": 4, "index": "dense",
                         "axis": 1}) == (125, 5 * 4)
    assert tensor_flash({"name": "b", "shape": [7], "bits": 32, "float_bits": 16}) == (0, 28)


def test_pruned_weights_still_cost_their_codes_in_flash_a_dense_kernel_reads_them():
    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", (1, 28, 28), 10, (8, 16), (32,), 3))
    dense = device_report(decode(encode(model, 4)))
    apply_masks(model, global_magnitude_masks(model, 0.8))
    file = decode(encode(model, 4))
    pruned = device_report(file)
    assert pruned[M.FLASH_BYTES] == dense[M.FLASH_BYTES]
    assert pruned[M.MACS] == dense[M.MACS]
    # Global magnitude pruning takes most from the dense layers, where a weight is one MAC;
    # a conv weight is one per output position (26 x 26, then 11 x 11).
    nz = {n: int((w != 0).sum()) for n, w, _ in prunable_weights(file.model)}
    assert pruned[M.NONZERO_MACS] == 26 * 26 * nz["features.0.weight"] + \
        11 * 11 * nz["features.3.weight"] + nz["classifier.2.weight"] + \
        nz["classifier.5.weight"] < dense[M.NONZERO_MACS]


def test_a_codebook_costs_its_indices_and_its_values():
    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", (1, 28, 28), 10, (4, 8), (16,), 3))
    WeightClustering(6).preview(model)
    names = [n for n, _, _ in prunable_weights(model)]
    decoded = decode(encode(model, 4, codings={n: Codebook(7) for n in names}))
    entries = {t["name"]: t for t in decoded.tensors}
    w = entries["classifier.2.weight"]  # 16 x 200, 6 values: 3-bit indices
    assert w["coding"] == "codebook" and w["bits"] == 3
    assert tensor_flash(w) == (-(-3200 * 3 // 8), w["codebook_size"] * 4)


def test_a_model_without_biases_saves_exactly_its_biases_in_flash():
    """model.bias false: the same weights, no bias per output channel (float32 in a
    weight-only file, int32 in an integer one): flash drops by 4 bytes an output channel."""
    import dataclasses

    from test_compress_integer import integer_file

    spec = ModelSpec("cnn", (1, 16, 16), 10, (4, 4), (16,), 3, block="depthwise")
    outputs = 4 + 4 + 16 + 10
    for make in (lambda m: encode(m, 4), lambda m: integer_file(m, 4)):
        torch.manual_seed(0)
        biased = flash_bytes(decode(make(build_model(spec))).tensors)
        torch.manual_seed(0)
        plain = build_model(dataclasses.replace(spec, bias=False))
        assert not any(n.endswith("bias") for n, _ in plain.named_parameters())
        bare = flash_bytes(decode(make(plain)).tensors)
        assert bare[M.WEIGHT_FLASH_BYTES] == biased[M.WEIGHT_FLASH_BYTES]
        assert biased[M.FLASH_BYTES] - bare[M.FLASH_BYTES] == 4 * outputs
