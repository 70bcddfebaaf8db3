"""The artifact format, pinned by golden files (``tests/golden/``, written once by
``tests/golden/make_golden.py`` with the code of their day and never rewritten).

Every file must decode to exactly the parameters, integer codes and scales stored beside it,
and give the same logits, forever: a change to the packer and unpacker together (bit order,
symbol mapping, section order) passes every round-trip test, but not these. The writer is
pinned too: encoding the stored source weights again gives the same bytes, so a refactor that
changes a file by one byte fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distopt.compress import decode, encode
from distopt.compress.coding import Codebook, IntCodes
from distopt.models import ModelSpec, build_model, prunable_weights

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.dopt"))


def _load(name: str) -> tuple[bytes, dict, dict[str, np.ndarray]]:
    with np.load(GOLDEN / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return (GOLDEN / f"{name}.dopt").read_bytes(), \
        json.loads((GOLDEN / f"{name}.json").read_text()), arrays


def test_the_golden_set_covers_every_family_block_bit_width_index_and_coding():
    assert len(CASES) >= 40
    seen: set[tuple[str, object]] = set()
    for name in CASES:
        data, info, _ = _load(name)
        spec = decode(data).model.spec
        seen |= {("family", spec.family), ("block", spec.block), ("cell", spec.cell),
                 ("bias", spec.bias),
                 ("version", info["version"]), ("tokens", spec.tokens), ("head", spec.head)}
        seen |= {("index", t.get("index"), t["bits"]) for t in info["tensors"] if "index" in t}
        seen |= {("coding", t.get("coding"), t.get("index")) for t in info["tensors"]}
    for family in ("cnn", "conv1d", "mlp", "rnn", "recsys"):
        assert ("family", family) in seen
    for block in ("plain", "same", "separable", "depthwise"):
        assert ("block", block) in seen
    for cell in ("rnn", "gru", "lstm"):
        assert ("cell", cell) in seen
    assert {("version", 1), ("version", 2), ("version", 3), ("tokens", True), ("bias", False),
            ("head", "gap")} <= seen
    for bits in (32, 16, 8, 4, 3, 2):
        for index in ("dense", "bitmask", "rice"):
            assert ("index", index, bits) in seen, (index, bits)
    for index in ("dense", "bitmask", "rice"):
        assert ("coding", "codebook", index) in seen, index
    assert ("coding", "int", "rice") in seen and ("coding", "float", None) in seen
    assert ("block", "bitnet") in seen
    assert {("coding", "int_tensor", "dense"), ("coding", "int_tensor", "bitmask")} & seen
    assert ("coding", "int_odd", "dense") in seen


@pytest.mark.parametrize("name", CASES)
def test_golden_file_decodes_to_its_stored_parameters_codes_and_logits(name):
    data, info, arrays = _load(name)
    dec = decode(data, name)
    state = dec.model.state_dict()
    stored = {k[len("decoded/"):] for k in arrays if k.startswith("decoded/")}
    assert set(state) == stored
    for key, value in state.items():
        np.testing.assert_array_equal(value.numpy(), arrays[f"decoded/{key}"], err_msg=key)
    assert set(dec.codes) == {k[len("codes/"):] for k in arrays if k.startswith("codes/")}
    for key, (q, scale) in dec.codes.items():
        np.testing.assert_array_equal(q, arrays[f"codes/{key}"], err_msg=key)
        np.testing.assert_array_equal(scale, arrays[f"scales/{key}"], err_msg=key)
    assert dec.meta == info["meta"] or info["version"] >= 2  # v2 and v3 shorten floats
    assert dec.tensors == info["tensors"]
    with torch.no_grad():
        logits = dec.model(torch.from_numpy(arrays["input"])).numpy()
    np.testing.assert_allclose(logits, arrays["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_encoding_the_golden_source_weights_again_gives_the_same_bytes(name):
    data, info, arrays = _load(name)
    spec: ModelSpec = decode(data).model.spec
    model = build_model(ModelSpec.from_dict({**spec.to_dict(), "dropout": 0.0})).eval()
    model.load_state_dict({k[len("source/"):]: torch.from_numpy(v)
                           for k, v in arrays.items() if k.startswith("source/")})
    codings: dict = {n: Codebook(k) for n, k in info.get("codebooks", {}).items()}
    if info.get("per_tensor") or info.get("odd"):
        for n, _, _ in prunable_weights(model):
            bits = info["weight_bits"].get(n, info["bits"])
            codings[n] = IntCodes(bits, bool(info.get("per_tensor")),
                                  bool(info.get("odd")) and bits <= 4)
    again = encode(model, info["bits"], info["meta"], info["weight_bits"],
                   version=info["version"], codings=codings)
    assert again == data
