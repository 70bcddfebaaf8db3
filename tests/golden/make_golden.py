"""Writes the golden ``.dopt`` files of ``tests/golden/`` (run once, by hand; never in a test).

These files pin the artifact format: ``tests/compress/test_golden.py`` decodes every one of
them and compares the parameters, the integer codes and the logits with what this script
stored beside them (``<case>.npz``), and encodes the stored source weights again and compares
the bytes. A file written by an old distopt must decode to the same model forever; so once
committed, these files are never rewritten. A new format version or coding adds new cases
(new names) and leaves the old ones alone.

The v1 and v2 files were written by distopt at commit 8b6d3ae (format v2 the default, v1 for
comparisons), the v3 files (coding ids: codebooks beside integer codes) by the commit that
introduced format v3, v2_cnn_depthwise_b4 and v2_cnn_nobias_b4 by the commit that introduced
depthwise blocks and layers without biases, the v3_cnn_int_tensor files by the commit that
introduced per-tensor scales, the v3_cnn_int_odd files by the commit that introduced odd levels;
torch 2.13.0, numpy 2.x, Python 3.11's lzma and zlib.

    python tests/golden/make_golden.py   # refuses to overwrite an existing case
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from distopt.compress import encode
from distopt.compress.artifact import decode
from distopt.compress.clustering import kmeans_1d, share_values
from distopt.compress.coding import Codebook, Coding, IntCodes
from distopt.models import ModelSpec, build_model, prunable_weights

HERE = Path(__file__).resolve().parent
META = {"input": {"scale": 1 / 255, "mean": 0.1307, "std": 0.3081, "tokens": False},
        "config_name": "golden", "data_digest": "0123456789abcdef"}

# name: (spec, default bits, per-layer bits, sparsity, format version)
CNN = dict(family="cnn", in_shape=(1, 12, 12), num_classes=10, conv_channels=(4, 8),
           dense_units=(16,))
CASES: dict[str, tuple[dict, int, dict[str, int], float, int]] = {}
for bits in (32, 16, 8, 4, 3, 2):
    for sparsity, index in ((0.0, "dense"), (0.5, "bitmask"), (0.95, "rice")):
        CASES[f"v2_cnn_plain_b{bits}_{index}"] = (CNN, bits, {}, sparsity, 2)
for block in ("same", "separable"):
    for bits in (8, 4):
        CASES[f"v2_cnn_{block}_b{bits}"] = ({**CNN, "block": block}, bits, {}, 0.5, 2)
# Depthwise-only blocks (added with the block kind; the spec's "block" names it).
CASES["v2_cnn_depthwise_b4"] = ({**CNN, "block": "depthwise", "conv_channels": (4, 4)}, 4, {},
                                0.5, 2)
# No biases (model.bias false: the spec's "bias" is written only then).
CASES["v2_cnn_nobias_b4"] = ({**CNN, "bias": False}, 4, {}, 0.5, 2)
CASES["v2_cnn_plain_b2_signs"] = (CNN, 2, {}, -1.0, 2)  # no zero code: a dense ternary index
CASES["v2_cnn_gap_b8"] = ({**CNN, "head": "gap", "in_shape": (1, 16, 16), "kernel_size": 5}, 8, {}, 0.0, 2)
CASES["v2_cnn_mixed_bits"] = (CNN, 8, {"features.0.weight": 8, "features.3.weight": 3,
                                       "classifier.2.weight": 2, "classifier.5.weight": 4}, 0.3, 2)
CASES["v2_conv1d_b8"] = (dict(family="conv1d", in_shape=(2, 1, 32), num_classes=6,
                              conv_channels=(4, 8), dense_units=(8,), kernel_size=5), 8, {},
                         0.2, 2)
CASES["v2_mlp_b4"] = (dict(family="mlp", in_shape=(1, 8, 8), num_classes=10,
                           dense_units=(24, 12)), 4, {}, 0.6, 2)
for cell in ("rnn", "gru", "lstm"):
    CASES[f"v2_rnn_{cell}_b8"] = (dict(family="rnn", in_shape=(1, 6, 5), num_classes=4,
                                       dense_units=(), cell=cell, rnn_units=(8, 6)), 8, {}, 0.4, 2)
CASES["v2_rnn_tokens_b4"] = (dict(family="rnn", in_shape=(7,), num_classes=3, cell="gru",
                                  rnn_units=(6,), vocab_size=40, embed_dim=5), 4, {}, 0.5, 2)
for bits in (32, 16, 8, 4):
    CASES[f"v1_cnn_b{bits}"] = (CNN, bits, {}, 0.5, 1)
# Format v3 (coding ids): codebooks (weight clustering), alone and beside integer codes.
CODEBOOKS: dict[str, dict[str, int]] = {
    "v3_cnn_codebook_dense": {n: 17 for n in ("features.0.weight", "features.3.weight",
                                              "classifier.2.weight", "classifier.5.weight")},
    "v3_cnn_codebook_sparse": {n: 5 for n in ("features.0.weight", "features.3.weight",
                                              "classifier.2.weight", "classifier.5.weight")},
    "v3_cnn_codebook_beside_int4": {"features.3.weight": 9, "classifier.2.weight": 9},
    "v3_rnn_tokens_codebook": {"embedding.weight": 7, "recurrent.0.weight_ih_l0": 7},
}
CASES["v3_cnn_codebook_dense"] = (CNN, 8, {}, 0.0, 3)
CASES["v3_cnn_codebook_sparse"] = (CNN, 32, {}, 0.9, 3)
CASES["v3_cnn_codebook_beside_int4"] = (CNN, 4, {"classifier.5.weight": 8}, 0.5, 3)
CASES["v3_rnn_tokens_codebook"] = (dict(family="rnn", in_shape=(7,), num_classes=3, cell="gru",
                                        rnn_units=(6,), vocab_size=40, embed_dim=5), 8, {}, 0.2,
                                   3)
# recsys: three id columns (a table of 3 rows < its 4 dimensions: scales per row) and two
# numbers, pairwise-dot interaction.
CASES["v2_recsys_dot_b4"] = (dict(family="recsys", in_shape=(5,), num_classes=2, embed_dim=4,
                                  buckets=(16, 3, 8), interaction="dot", dense_units=(6,)),
                             4, {}, 0.5, 2)
# One scale per tensor (compress.quantize.scales tensor: the "int_tensor" coding, format v3).
PER_TENSOR = {"v3_cnn_int_tensor_b4", "v3_cnn_int_tensor_b2"}
CASES["v3_cnn_int_tensor_b4"] = (CNN, 4, {"classifier.5.weight": 8}, 0.5, 3)
CASES["v3_cnn_int_tensor_b2"] = ({**CNN, "block": "bitnet", "bias": False, "in_shape": (1, 16, 16),
                                  "conv_channels": (4, 4, 4)}, 2, {}, 0.3, 3)
# Odd levels without a zero (compress.quantize.odd_levels: the "int_odd" coding, format v3).
ODD = {"v3_cnn_int_odd_b2", "v3_cnn_int_odd_tensor_b4"}
PER_TENSOR.add("v3_cnn_int_odd_tensor_b4")
CASES["v3_cnn_int_odd_b2"] = (CNN, 2, {"classifier.5.weight": 8}, 0.0, 3)
CASES["v3_cnn_int_odd_tensor_b4"] = (CNN, 4, {}, 0.0, 3)
CASES["v1_rnn_tokens_b8"] = (dict(family="rnn", in_shape=(7,), num_classes=3, cell="lstm",
                                  rnn_units=(6,), vocab_size=40, embed_dim=5), 8, {}, 0.3, 1)


def spec_of(d: dict) -> ModelSpec:
    base = ModelSpec(d["family"], tuple(d["in_shape"]), d["num_classes"])
    return ModelSpec.from_dict({**base.to_dict(), **{k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in d.items()}})


def source_model(spec: ModelSpec, sparsity: float, seed: int) -> torch.nn.Module:
    """Seeded random weights with the smallest ``sparsity`` of every weight set to zero
    (``sparsity`` < 0: weights of one magnitude, signs at random, so no code rounds to zero)."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases non-zero, of varied size
            p.add_(torch.randn_like(p) * 0.05)
        for _, w, _ in prunable_weights(model):
            if sparsity < 0:
                w.copy_(torch.where(w >= 0, 0.1, -0.1))
            elif sparsity:
                k = int(sparsity * w.numel())
                cut = w.abs().flatten().kthvalue(max(k, 1)).values
                w[w.abs() <= cut] = 0.0
    return model


def cluster(model: torch.nn.Module, books: dict[str, int]) -> None:
    """Give each named weight at most ``size - 1`` shared non-zero values (k-means), as weight
    clustering leaves it; zeros stay zero."""
    params = dict(model.named_parameters())
    for name, size in books.items():
        w = params[name]
        flat = w.detach().reshape(-1)
        assign = torch.full((flat.numel(),), -1, dtype=torch.int64)
        nz = flat != 0
        assign[nz] = kmeans_1d(flat[nz], size - 1)[1]
        share_values(w.data, assign, size - 1)


def example(spec: ModelSpec, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if spec.tokens:
        return torch.randint(0, spec.vocab_size, (3, *spec.in_shape), generator=g)
    if spec.buckets:  # tabular rows: bucket ids (some past the tables' rows), then numbers
        ids = torch.randint(0, 40, (3, len(spec.buckets)), generator=g).float()
        return torch.cat([ids, torch.randn((3, spec.in_shape[0] - len(spec.buckets)),
                                           generator=g)], 1)
    return torch.randn((3, *spec.in_shape), generator=g)


def codings_of(model: torch.nn.Module, name: str, bits: int, layer_bits: dict[str, int],
               books: dict[str, int]) -> dict[str, Coding]:
    """A case's codings: its codebooks; in a per-tensor or odd-level case, every weight's
    integer codes with one scale, or on odd levels (4 bits or fewer)."""
    codings: dict[str, Coding] = {n: Codebook(size) for n, size in books.items()}
    if name in PER_TENSOR or name in ODD:
        for n, _, _ in prunable_weights(model):
            b = layer_bits.get(n, bits)
            codings[n] = IntCodes(b, name in PER_TENSOR, name in ODD and b <= 4)
    return codings


def main() -> None:
    for i, (name, (d, bits, layer_bits, sparsity, version)) in enumerate(sorted(CASES.items())):
        path = HERE / f"{name}.dopt"
        if path.exists():
            continue
        spec = spec_of(d)
        model = source_model(spec, sparsity, seed=100 + i)
        books = CODEBOOKS.get(name, {})
        cluster(model, books)
        data = encode(model, bits, META, layer_bits, version=version,
                      codings=codings_of(model, name, bits, layer_bits, books))
        dec = decode(data)
        x = example(spec, seed=200 + i)
        with torch.no_grad():
            logits = dec.model(x).numpy()
        arrays = {f"source/{k}": v.numpy() for k, v in model.state_dict().items()}
        arrays.update({f"decoded/{k}": v.numpy() for k, v in dec.model.state_dict().items()})
        for k, (q, scale) in dec.codes.items():
            arrays[f"codes/{k}"], arrays[f"scales/{k}"] = q, scale
        arrays["input"], arrays["logits"] = x.numpy(), logits
        np.savez_compressed(HERE / f"{name}.npz", **arrays)
        path.write_bytes(data)
        (HERE / f"{name}.json").write_text(json.dumps(
            {"bits": bits, "weight_bits": layer_bits, "codebooks": books, "version": version,
             "per_tensor": name in PER_TENSOR, "odd": name in ODD, "meta": META,
             "tensors": dec.tensors}, indent=1) + "\n")
        print(name, len(data), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
