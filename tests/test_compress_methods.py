"""Compression methods as plug-ins (distopt.compress.method): the registry, a method added from
outside that a training run calls without knowing it, weight clustering (the first method
added that way), and format v3's per-tensor coding ids."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch

from distopt import metrics as M
from distopt.compress import METHODS, CompressionMethod, decode, encode, register
from distopt.compress import sections as S
from distopt.compress import wrapper as W
from distopt.compress.clustering import WeightClustering, kmeans_1d, share_values
from distopt.compress.coding import Codebook, IntCodes
from distopt.compress.wrapper import ArtifactError
from distopt.config import load_config
from distopt.models import ModelSpec, build_model, prunable_weights
from distopt.training import WorkerEnv, fit
from distopt.training.compression import Compression

from conftest import TINY

SMALL = ModelSpec("cnn", (1, 12, 12), 10, (4, 8), (16,))


def test_built_in_methods_are_registered_in_plan_order():
    assert [m.name for m in METHODS] == ["pruning", "row_pruning", "clustering",
                                         "quantization", "activation_quantization"]
    with pytest.raises(ValueError, match="registered already"):
        register(type("Again", (CompressionMethod,), {"name": "pruning"}))
    with pytest.raises(ValueError, match="checkpoint keys"):
        register(type("Clash", (CompressionMethod,), {"name": "clash",
                                                      "checkpoint_keys": ("masks",)}))
    assert [m.name for m in METHODS] == ["pruning", "row_pruning", "clustering",
                                         "quantization", "activation_quantization"]


class HalveWeights(CompressionMethod):
    """A method from outside the package: halves every weight when dense training ends, keeps
    the largest weight of each tensor at zero after every step, and records its hooks."""

    name, order, checkpoint_keys = "halve", 15, ("halve_steps",)
    calls: list[str] = []

    @classmethod
    def from_config(cls, compress: Any) -> HalveWeights:
        return cls()

    def __init__(self) -> None:
        self.steps = 0

    @property
    def fine_tunes(self) -> bool:
        return True

    def begin(self, model, device):
        self.calls.append("begin")
        with torch.no_grad():
            for _, w, _ in prunable_weights(model):
                w.mul_(0.5)
        return model

    def begin_epoch(self, model, k, device):
        self.calls.append(f"epoch {k}")

    def after_step(self, model):
        self.steps += 1

    def checkpoint(self) -> dict[str, Any]:
        return {"halve_steps": self.steps}

    def restore(self, state, device):
        self.steps = state.get("halve_steps") or 0


def test_a_registered_method_runs_in_a_training_run_that_never_names_it(splits, monkeypatch):
    monkeypatch.setattr("distopt.compress.method.METHODS", list(METHODS))
    register(HalveWeights)
    HalveWeights.calls = []
    states: list[dict] = []
    cfg = load_config(None, TINY + ["compress.prune.ratio=0", "compress.finetune_epochs=2"])
    out = fit(cfg, WorkerEnv(), lambda m, s, f=None: states.append(s), splits=splits)
    # Nothing else fine-tunes here: the method alone brought the fine-tune epochs.
    assert HalveWeights.calls == ["begin", "epoch 1"]
    assert [s["halve_steps"] for s in states if s is not None][-1] == 2 * 5  # 2 epochs x 5 steps
    assert out["metrics"][M.PHASE] == "final"


def test_kmeans_finds_separated_clusters_and_assigns_each_value_its_nearest_centroid():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(200, generator=g) * 0.01 + c for c in (-1.0, 0.2, 3.0)])
    centroids, assign = kmeans_1d(values, 3)
    assert torch.allclose(centroids, torch.tensor([-1.0, 0.2, 3.0]), atol=0.01)
    nearest = (values[:, None] - centroids[None, :]).abs().argmin(1)
    assert torch.equal(assign, nearest)
    few, _ = kmeans_1d(torch.tensor([0.5, 0.5, 0.7]), 8)  # more clusters than values
    assert len(few) == 8


def test_shared_values_are_cluster_means_in_float16_and_pruned_weights_stay_zero():
    w = torch.tensor([[0.10, 0.12, 0.0], [0.9, 1.1, -0.5]])
    assign = torch.tensor([0, 0, -1, 1, 1, 2])
    share_values(w, assign, 3)
    expected = torch.tensor([[0.11, 0.11, 0.0], [1.0, 1.0, -0.5]]).half().float()
    assert torch.equal(w, expected)
    conv = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)  # training's layout
    flat_assign = torch.arange(conv.numel()) % 5
    logical = conv.reshape(-1).clone()
    share_values(conv, flat_assign, 5)
    means = torch.stack([logical[flat_assign == j].mean() for j in range(5)]).half().float()
    assert torch.equal(conv.reshape(-1), means[flat_assign])


def test_clustered_model_is_stored_as_a_codebook_in_a_smaller_v3_file():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    method = WeightClustering(8)
    dense = encode(model, 32)
    method.preview(model)
    codings: dict = {}
    method.claim_codings(model, codings)
    assert all(c == Codebook(9) for c in codings.values())
    data = encode(model, 32, codings=codings)
    dec = decode(data)
    assert data[4] == 3 and len(data) < 0.5 * len(dense)
    for name, w, _ in prunable_weights(dec.model):
        assert len(torch.unique(w)) <= 8
        assert torch.equal(w, dict(model.named_parameters())[name])  # exact: no rounding
    assert {t["coding"] for t in dec.tensors} == {"codebook", "float"}
    assert not dec.codes  # no integer codes: exporters write these weights as floats


def test_encode_refuses_a_codebook_too_small_or_a_version_without_codings():
    model = build_model(SMALL).eval()
    name = "features.0.weight"
    with pytest.raises(ValueError, match="cannot hold a tensor of 36 distinct values"):
        encode(model, 8, codings={name: Codebook(4)})
    WeightClustering(4).preview(model)
    with pytest.raises(ValueError, match="format version 2 has no coding"):
        encode(model, 8, codings={name: Codebook(5)}, version=2)
    # Integer codes alone are still written as version 2, byte for byte.
    assert encode(model, 8, codings={name: IntCodes(4)}) == encode(model, 8, weight_bits={name: 4})
    assert encode(model, 8)[4] == 2


def _v3_parts(data: bytes) -> tuple[dict, list[bytes], int]:
    secs = S.sections(data, "test")
    raws = [S.unpack_section(s, s[1], "s", "test", S.BYTE_LAYOUT) for s in secs]
    return json.loads(raws[0]), raws, secs[3][0] & S.BYTE_LAYOUT


def _v3_build(header: dict, raws: list[bytes], flag: int) -> bytes:
    parts = [json.dumps(header).encode(), *raws[1:]]
    body = b"".join(S.section(flag if i == 3 else 0, len(r), r) for i, r in enumerate(parts))
    return W.wrap(3, 0, body)


@pytest.mark.parametrize("mutate, reason", [
    (lambda h: h["t"][0].__setitem__(0, 9), "unknown coding id 9"),
    (lambda h: h["t"].__setitem__(0, [2, 16]), "coding 'float' is not for weights"),
    (lambda h: h["t"].__setitem__(1, [0, 8, 16, 0, 4, 0, 0]), "coding 'int' is not for this"),
    (lambda h: h["t"][0].__setitem__(1, 0), "a codebook of 0 values"),
    (lambda h: h["t"][0].__setitem__(2, 8), "codebook value bits 8"),
    (lambda h: h["t"].__setitem__(0, []), "unknown coding id None"),
])
def test_v3_invalid_entries_raise_artifact_error_naming_the_problem(mutate, reason):
    model = build_model(SMALL).eval()
    WeightClustering(4).preview(model)
    data = encode(model, 8, codings={"features.0.weight": Codebook(5)})
    header, raws, flag = _v3_parts(data)
    assert header["t"][0][0] == 1 and header["t"][2][0] == 0 and header["t"][1][0] == 2
    assert decode(_v3_build(header, raws, flag)).tensors == decode(data).tensors
    mutate(header)
    with pytest.raises(ArtifactError, match=reason):
        decode(_v3_build(header, raws, flag))


def test_v3_codebook_index_beyond_its_values_is_refused():
    model = build_model(SMALL).eval()
    WeightClustering(4).preview(model)
    data = encode(model, 8, codings={"features.0.weight": Codebook(5)})
    header, raws, flag = _v3_parts(data)
    size = header["t"][0][1]
    header["t"][0][1] = size - 1  # the table loses a value: an index now points past it
    raws = [raws[0], raws[1], raws[2][2:], raws[3]]  # ... and the section its two bytes
    with pytest.raises(ArtifactError, match="codebook index .* is beyond its"):
        decode(_v3_build(header, raws, flag))


@pytest.mark.slow
def test_clustering_fine_tunes_shared_values_resumes_and_its_rung_size_is_the_file(splits):
    cfg = load_config(None, TINY + ["compress.prune.ratio=0.5", "compress.cluster.k=6",
                                    "compress.finetune_epochs=2", "compress.quantize.bits=4",
                                    "compress.quantize.qat=true", "search.scheduler=mo_asha"])
    reports: list[dict] = []
    states: list[dict] = []
    out = fit(cfg, WorkerEnv(), lambda m, s, f=None: (reports.append(m),
                                                       states.append(copy.deepcopy(s))),
              splits=splits)
    dec = decode(out["artifact"])
    for name, w, _ in prunable_weights(dec.model):
        assert len(torch.unique(w[w != 0])) <= 6, name
    assert {t.get("coding") for t in dec.tensors if t["name"].endswith("weight")} == \
        {"codebook"}
    rung = [r for r in reports if r[M.PHASE] == "train"][-1][M.EXPECTED_SIZE_BYTES]
    assert abs(len(out["artifact"]) / rung - 1) < 0.05
    # Resumed from the first fine-tune epoch's checkpoint: the same file as without the break.
    first_finetune = next(s for s, r in zip(states, reports) if r[M.PHASE] == "finetune")
    assert set(first_finetune["clusters"]) == {n for n, _, _ in prunable_weights(dec.model)}
    again = fit(cfg, WorkerEnv(), lambda m, s, f=None: None, state=first_finetune,
                splits=splits)
    assert again["artifact"] == out["artifact"]
    assert np.isfinite(out["metrics"][M.VAL_ACCURACY])


@pytest.mark.parametrize("overrides", [
    [], ["compress.prune.ratio=0.5"], ["compress.cluster.k=8"],
    ["compress.prune.ratio=0.5", "compress.finetune_epochs=0"],
    ["compress.cluster.k=4", "compress.prune.ratio=0.3", "compress.quantize.qat=true",
     "compress.quantize.bits=4"],
    ["compress.quantize.bits=2"]])
def test_the_run_and_the_config_checks_agree_on_whether_the_built_in_methods_fine_tune(
        overrides):
    """The config checks read ``CompressConfig.fine_tunes`` (e.g. QAT needs a fine-tune); a
    run asks its methods. For the built-in methods the two must agree."""
    cfg = load_config(None, overrides)
    run = Compression(cfg.compress)
    assert (run.finetune_epochs > 0) == cfg.compress.fine_tunes
    names = [m.name for m in run.methods]
    assert names[-1] == "quantization"
    assert ("pruning" in names) == (cfg.compress.prune.ratio > 0)
    assert ("clustering" in names) == (cfg.compress.cluster.k > 0)


def test_pruned_weights_gradients_stay_out_of_the_clipped_norm():
    """train.grad_clip in a fine-tune: the pruned weights' gradients (thrown away by the mask
    after the step) must not count in the norm that scales the others down."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (1, 4, 4), 3, (), (8,), 3))
    run = Compression(load_config(None, ["compress.prune.ratio=0.75"]).compress)
    model = run.begin(model, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    run.before_clip(model)  # what the fine-tune's step calls before clipping
    method = run.methods[0]
    weights = dict(model.named_parameters())
    for name, mask in method.masks.items():
        assert torch.equal(weights[name].grad, mask) and 0 < mask.sum() < mask.numel()
    kept = sum(int(m.sum()) for m in method.masks.values())
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    biases = sum(p.numel() for n, p in weights.items() if n not in method.masks)
    assert float(norm) == pytest.approx((kept + biases) ** 0.5)
