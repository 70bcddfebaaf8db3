"""The recommendation family (distopt.models.recsys) and what it brings along: id folding,
the pairwise-dot interaction and its MACs, the embedding scale axis, ONNX parity, embedding row
pruning and row bits, the ROC AUC every binary evaluation reports, and learning on
clicks-mini."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distopt import metrics as M
from distopt.compress import decode, device_report, encode
from distopt.compress.row_pruning import row_masks
from distopt.config import load_config
from distopt.data import load_splits
from distopt.models import ModelSpec, build_model, fold_ids, prunable_weights
from distopt.models.cost import activation_cost
from distopt.runtime import InputNorm
from distopt.training import WorkerEnv, fit
from distopt.training.evaluation import AUC_BINS, auc_from_histograms, evaluate

CLICKS = ["data.name=clicks-mini", "data.kind=tabular", "data.num_classes=2",
          "model.family=recsys", "model.buckets=256", "model.embed_dim=4",
          "model.interaction=dot", "model.dense_units=16", "train.epochs=2",
          "train.batch_size=256", "train.lr=0.005", "regularization.l2=0.0001",
          "train.precision=fp32"]


def spec(interaction: str = "dot", numbers: int = 2, buckets=(100, 3, 50)) -> ModelSpec:
    return ModelSpec("recsys", (len(buckets) + numbers,), 2, (), (16,), 3, 0.0, embed_dim=8,
                     buckets=tuple(buckets), interaction=interaction)


def rows(n: int, k: int, numbers: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, 1000, (n, k)), rng.normal(2, 3, (n, numbers))],
                          1).astype(np.float32)


def exact_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney by brute force: the share of (positive, negative) pairs ranked right, ties
    half."""
    pos, neg = scores[y == 1], scores[y == 0]
    wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_the_exact_auc_of_ranks_counts_ties_half():
    from distopt.ranking import roc_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 700)
    scores = np.round(rng.normal(0.5 * y, 1), 1)  # many ties
    assert roc_auc(scores, y) == pytest.approx(exact_auc(scores, y), abs=1e-12)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert math.isnan(roc_auc(np.ones(3), np.ones(3)))


def test_ids_fold_onto_a_table_keeping_bucket_zero_and_the_ids_below_its_rows():
    ids = torch.tensor([0, 1, 5, 9, 10, 11, 19, 123])
    assert fold_ids(ids, 10).tolist() == [0, 1, 5, 9, 1, 2, 1, 6]
    assert fold_ids(torch.arange(1, 10), 10).tolist() == list(range(1, 10))


@pytest.mark.parametrize("interaction", ["dot", "mlp"])
def test_the_model_reads_ids_then_numbers_and_dot_takes_every_pair_once(interaction):
    torch.manual_seed(0)
    model = build_model(spec(interaction)).eval()
    x = torch.from_numpy(rows(4, 3, 2))
    assert model(x).shape == (4, 2)
    v = torch.randn(4, 4, 3)  # three tables and the numbers' vector
    if interaction == "dot":
        pairs = model.interact(v)
        want = torch.stack([(v[:, i] * v[:, j]).sum(1) for i in range(4)
                            for j in range(i + 1, 4)], 1)
        assert torch.allclose(pairs, want, atol=1e-6)
    # An id past the table's rows looks up its folded row; bucket 0 its own.
    table = model.embeddings[0]
    y = x.clone()
    y[:, 0] = 0
    assert not torch.equal(model(y), model(x)) or torch.equal(table.weight[0], table.weight[1])


def test_macs_count_the_pairwise_dots_and_every_dense_layer():
    model = build_model(spec("dot"))
    cost = activation_cost(model, model.spec)
    m, d = 4, 8  # three tables and the numbers' vector
    linear = 2 * d + (m * (m - 1) // 2 + d) * 16 + 16 * 2
    assert cost[M.MACS] == linear + m * (m - 1) // 2 * d


def test_a_table_with_fewer_rows_than_dimensions_gets_a_scale_per_row():
    model = build_model(spec(buckets=(100, 3, 50)))
    axes = {n: a for n, _, a in prunable_weights(model)}
    assert (axes["embeddings.0.weight"], axes["embeddings.1.weight"]) == (1, 0)
    dec = decode(encode(model, 8))
    rep = device_report(dec)
    tables = (100 * 8 + 8 * 4) + (3 * 8 + 3 * 4) + (50 * 8 + 8 * 4)  # codes + float32 scales
    assert rep[M.EMBEDDING_FLASH_BYTES] == tables < rep[M.FLASH_BYTES]


@pytest.mark.parametrize("interaction,numbers", [("dot", 2), ("mlp", 2), ("dot", 0)])
@pytest.mark.parametrize("bits", [32, 8, 4, 2])
def test_onnx_runtime_computes_what_the_decoded_model_does(interaction, numbers, bits):
    pytest.importorskip("onnxruntime")
    from distopt.export import parity, to_onnx

    torch.manual_seed(bits)
    model = build_model(spec(interaction, numbers))
    for t in model.embeddings:
        torch.nn.init.normal_(t.weight)
    model.embeddings[0].weight.data[5:40] = 0  # pruned rows
    norm = InputNorm(1.0, 0.0, 1.0, column_mean=(0.0,) * 3 + (2.0,) * numbers,
                     column_std=(1.0,) * 3 + (3.0,) * numbers)
    dec = decode(encode(model, bits, meta={"input": norm.to_meta()}))
    x = rows(400, 3, numbers, seed=bits)
    got = parity(dec, to_onnx(dec), x, (x[:, 0] % 2).astype(np.int64))
    assert got["max_abs_logit_diff"] < 1e-5 and got["agreement"] == 1.0
    assert got["test_auc_onnxruntime"] == pytest.approx(got["test_auc_pytorch"], abs=1e-3)


def test_row_masks_drop_the_smallest_rows_of_every_table_and_keep_one():
    model = build_model(spec())
    with torch.no_grad():
        model.embeddings[0].weight.copy_(torch.arange(100.0)[:, None].expand(100, 8))
    masks = row_masks(model, 0.3)
    keep = masks["embeddings.0.weight"][:, 0]
    assert keep.sum() == 70 and not keep[:30].any() and keep[30:].all()
    assert masks["embeddings.1.weight"][:, 0].sum() == 3  # floor(0.9) rows of 3: none
    assert row_masks(model, 0.99)["embeddings.1.weight"][:, 0].sum() == 1
    assert set(masks) == {"embeddings.0.weight", "embeddings.1.weight", "embeddings.2.weight"}


def test_auc_objectives_need_two_classes_and_their_hypervolume_starts_at_chance():
    from distopt.config import ConfigError
    from distopt.results.objectives import hv_reference

    with pytest.raises(ConfigError, match="val_auc with data.num_classes 10; AUC and log loss"):
        load_config(None, ["search.objectives=[[val_auc, max], [size_bytes, min]]"])
    cfg = load_config(None, CLICKS + ["search.objectives=[[val_auc, max], [size_bytes, min]]"])
    assert M.quality(cfg.search.objectives) == (M.VAL_AUC, "max")
    assert hv_reference(cfg, np.array([[0.7, 3.0], [0.6, 2.0]]))[0] == 0.5


def test_auc_from_histograms_is_the_mann_whitney_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    scores = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    bins = np.minimum((scores * AUC_BINS).astype(int), AUC_BINS - 1)
    neg = np.bincount(bins[y == 0], minlength=AUC_BINS).astype(float)
    pos = np.bincount(bins[y == 1], minlength=AUC_BINS).astype(float)
    assert auc_from_histograms(neg, pos) == pytest.approx(exact_auc(scores, y), abs=2e-4)
    assert math.isnan(auc_from_histograms(neg, np.zeros(AUC_BINS)))


def test_evaluate_reports_auc_for_two_classes_only():
    torch.manual_seed(0)
    model = build_model(spec())
    x, y = rows(2000, 3, 2), np.random.default_rng(1).integers(0, 2, 2000)
    norm = InputNorm(1.0, 0.0, 1.0, column_mean=(0.0,) * 5, column_std=(1.0,) * 5)
    e = evaluate(model, x, y, norm, WorkerEnv(), 256)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(x)), 1)[:, 1].numpy()
    assert e.auc == pytest.approx(exact_auc(p, y), abs=1e-3)
    assert math.isnan(evaluate(model, x, y, norm, WorkerEnv(), 256, auc=False).auc)
    cnn = build_model(ModelSpec("mlp", (1, 4, 4), 3, (), (8,)))
    e3 = evaluate(cnn, np.zeros((10, 1, 4, 4), np.float32), np.zeros(10, np.int64),
                  InputNorm(1.0, 0.0, 1.0), WorkerEnv(), 4)
    assert math.isnan(e3.auc)


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict] = []

    def __call__(self, metrics, state, files=None):
        self.reports.append(dict(metrics))


def test_a_recsys_model_learns_clicks_beyond_what_the_ids_alone_cannot_say():
    """Two epochs on clicks-mini: validation and test AUC above 0.66, where the generator's
    own log-odds without the user-item term (the true main effects alone) reach 0.647 on the
    test rows: the tables learned the interaction. Every epoch reports AUC and log loss."""
    cfg = load_config(None, CLICKS)
    rec = Recorder()
    out = fit(cfg, WorkerEnv(), rec, splits=load_splits(cfg.data), evaluate_test=True)
    m = out["metrics"]
    assert m[M.VAL_AUC] > 0.66 and m[M.TEST_AUC] > 0.66, m[M.VAL_AUC]
    assert m[M.VAL_LOGLOSS] == m[M.VAL_LOSS] and m[M.EMBEDDING_FLASH_BYTES] > 0
    assert all(not math.isnan(r[M.VAL_AUC]) for r in rec.reports)


def test_row_pruning_zeroes_rows_shrinks_the_file_but_not_the_flash():
    base = load_config(None, CLICKS + ["train.epochs=1", "compress.finetune_epochs=1",
                                       "model.interaction=mlp"])
    pruned = load_config(None, CLICKS + ["train.epochs=1", "compress.finetune_epochs=1",
                                         "model.interaction=mlp",
                                         "compress.prune_rows.ratio=0.6",
                                         "compress.quantize.bits_embedding=4"])
    splits = load_splits(base.data)
    a = fit(base, WorkerEnv(), Recorder(), splits=splits)
    b = fit(pruned, WorkerEnv(), Recorder(), splits=splits)
    dec = decode(b["artifact"])
    for table in dec.model.embeddings:
        zero_rows = int((table.weight.abs().sum(1) == 0).sum())
        assert zero_rows >= int(0.6 * table.num_embeddings)
    bits = {t["name"]: t["bits"] for t in dec.tensors}
    assert bits["embeddings.0.weight"] == 4 and bits["classifier.2.weight"] == 8
    assert b["metrics"][M.SIZE_BYTES] < a["metrics"][M.SIZE_BYTES]
    # flash: 4-bit rows instead of 8-bit, and nothing saved by the zero rows
    codes = sum(t.num_embeddings * t.embedding_dim for t in dec.model.embeddings)
    assert a["metrics"][M.EMBEDDING_FLASH_BYTES] - b["metrics"][M.EMBEDDING_FLASH_BYTES] == \
        codes - codes // 2


def _stop_after(scores: list[float], patience: int) -> int:
    """Dense epochs a plateau of ``patience`` on ``scores`` (larger better) lets run."""
    best, since = -math.inf, 0
    for i, v in enumerate(scores):
        best, since = (v, 0) if v > best else (best, since + 1)
        if since >= patience:
            return i + 1
    return len(scores)


def test_early_stopping_watches_the_searchs_quality_objective():
    """With val_auc as the objective, dense training ends when AUC (not accuracy) has not
    improved for train.early_stop_patience epochs. At this rate the large tables' AUC still
    rises at epoch 1 while accuracy already falls, so the two rules stop at different epochs
    (checked on the recorded metrics, so the test keeps its power)."""
    cfg = load_config(None, CLICKS + [
        "model.buckets=4096", "data.num_buckets=4096", "model.embed_dim=16",
        "regularization.l2=0", "train.lr=0.02", "train.epochs=8",
        "train.early_stop_patience=1", "compress.finetune_epochs=0",
        "search.objectives=[[val_auc, max], [size_bytes, min]]"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=load_splits(cfg.data))
    dense = [r for r in rec.reports if r[M.PHASE] == "train"]
    by_auc = _stop_after([r[M.VAL_AUC] for r in dense], 1)
    by_accuracy = _stop_after([r[M.VAL_ACCURACY] for r in dense], 1)
    assert len(dense) == by_auc < 8 and by_accuracy != by_auc, dense
    assert rec.reports[-1][M.EARLY_STOPPED]
