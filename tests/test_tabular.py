"""Tabular data (distopt.data.tabular, distopt.data.clicks): hashing into buckets, the encoded
matrix, the generated click log, its splits and input normalization, and the driver's checks
of a user's tabular Parquet (every problem named, exit 2 before Ray)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distopt.config import ConfigError, load_config
from distopt.data import load_splits
from distopt.data.checks import check_parquet_data
from distopt.data.clicks import CLICKS_MINI_TEST, CLICKS_MINI_TRAIN, generate_clicks
from distopt.data.splits import DataError
from distopt.data.tabular import OOV_BUCKET, encode_table, hash_bucket, hash_buckets
from distopt.training.inputs import input_norm, training_batch

CLICKS = ["data.name=clicks-mini", "data.kind=tabular", "data.num_classes=2",
          "model.family=recsys", "model.buckets=64", "model.embed_dim=4"]


def test_hash_buckets_are_pinned_stable_and_leave_bucket_zero_to_nulls():
    # Pinned: a server hashing ids before calling an exported model must get these.
    assert [hash_bucket(v, 1000) for v in ("alice", "bob", 42, "42", 0)] == \
        [hash_bucket("alice", 1000), hash_bucket("bob", 1000), hash_bucket("42", 1000),
         hash_bucket("42", 1000), hash_bucket("0", 1000)]
    assert (hash_bucket("alice", 1000), hash_bucket(42, 1000)) == (905, 460)
    assert hash_bucket(None, 1000) == OOV_BUCKET == 0
    ids = [hash_bucket(f"user{i}", 17) for i in range(2000)]
    assert set(ids) == set(range(1, 17))  # every bucket but 0 used, none outside
    col = pa.chunked_array([pa.array(["a", None, "b", "a"]), pa.array(["c"])])
    assert hash_buckets(col, 50).tolist() == [hash_bucket(v, 50) for v in
                                              ("a", None, "b", "a", "c")]
    dictionary = pa.array(["a", None, "b"]).dictionary_encode()
    assert hash_buckets(dictionary, 50).tolist() == [hash_bucket("a", 50), 0,
                                                     hash_bucket("b", 50)]
    with pytest.raises(TypeError, match="integers or strings"):
        hash_bucket(1.5, 10)


def test_encoded_rows_hold_bucket_ids_first_then_the_numbers_as_stored():
    table = pa.table({"user": ["u1", "u2", None], "item": [7, 8, 7],
                      "price": [1.5, 2.5, 3.5], "n": pa.array([1, 2, 3], pa.int32())})
    x = encode_table(table, ["user", "item"], ["price", "n"], 100)
    assert x.dtype == np.float32 and x.shape == (3, 4)
    assert x[:, 0].tolist() == [hash_bucket("u1", 100), hash_bucket("u2", 100), 0]
    assert x[0, 1] == x[2, 1] == hash_bucket(7, 100)
    assert x[:, 2:].tolist() == [[1.5, 1], [2.5, 2], [3.5, 3]]
    with pytest.raises(DataError, match="'price' has type"):
        encode_table(pa.table({"price": ["cheap"]}), [], ["price"], 10)
    with pytest.raises(DataError, match="categorical column 'p' has type double"):
        encode_table(pa.table({"p": [1.0]}), ["p"], [], 10)


def test_columns_of_few_values_hash_into_their_own_buckets_and_tables():
    from distopt.models import spec_from_config

    table = pa.table({"user": ["u1", "u2"], "device": ["mobile", "tablet"]})
    x = encode_table(table, ["user", "device"], [], [1000, 8])
    assert x[:, 1].tolist() == [hash_bucket("mobile", 8), hash_bucket("tablet", 8)]
    assert x[:, 0].tolist() == [hash_bucket("u1", 1000), hash_bucket("u2", 1000)]
    cfg = load_config(None, CLICKS + ["data.num_buckets=4096", "model.buckets=1024",
                                      "data.column_buckets={device: 32, hour: 2048}"])
    assert cfg.data.buckets_of == (4096, 4096, 4096, 2048, 32)
    assert spec_from_config(cfg).buckets == (1024, 1024, 1024, 1024, 32)
    splits = load_splits(cfg.data)
    assert splits.x_train[:, 4].max() < 32 and splits.x_train[:, 3].max() < 2048
    with pytest.raises(ConfigError, match=r"data.column_buckets: got \['nope'\], not "):
        load_config(None, CLICKS + ["data.column_buckets={nope: 4}"])


def test_clicks_mini_is_seeded_skewed_and_about_a_fifth_clicks():
    a, b = generate_clicks(5000, seed=3), generate_clicks(5000, seed=3)
    assert a.equals(b) and not a.equals(generate_clicks(5000, seed=4))
    y = a.column("click").to_numpy()
    assert 0.1 < y.mean() < 0.3
    users = a.column("user_id").to_numpy()
    _, counts = np.unique(users, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[: len(top) // 100].sum() > 0.1 * len(users)  # 1% of users, >10% of traffic
    assert a.column("category").type == pa.string()


def test_clicks_splits_and_the_per_column_norm_that_leaves_ids_exact():
    cfg = load_config(None, CLICKS)
    splits = load_splits(cfg.data)
    assert splits.id_columns == 5 and splits.x_train.shape[1] == 7
    assert len(splits.x_train) + len(splits.x_val) == CLICKS_MINI_TRAIN
    assert len(splits.x_test) == CLICKS_MINI_TEST
    assert splits.x_train[:, :5].max() < cfg.data.num_buckets
    norm = input_norm(splits)
    assert norm.tabular and norm.column_mean[:5] == (0.0,) * 5 and norm.column_std[:5] == (1.0,) * 5
    x = torch.from_numpy(splits.x_train[:1000])
    out = training_batch(x, norm, cfg.augment, torch.Generator())  # no augmentation
    assert torch.equal(out[:, :5], x[:, :5])  # ids pass through exactly
    full = norm(torch.from_numpy(splits.x_train))[:, 5:]
    assert torch.allclose(full.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(full.std(0), torch.ones(2), atol=1e-3)
    from distopt.runtime import InputNorm
    assert InputNorm.from_meta(norm.to_meta()) == norm


def _write(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


def test_bad_tabular_parquet_is_reported_column_by_column(tmp_path):
    bad = _write(tmp_path / "bad.parquet", user=[1.5, 2.5], price=["a", "b"],
                 age=[1.0, float("nan")], label=[0, 3])
    cfg = load_config(None, ["data.name=parquet", f"data.path={bad}", "data.kind=tabular",
                             "data.num_classes=2", "model.family=recsys",
                             "data.categorical_columns=[user]",
                             "data.numeric_columns=[price, age]"])
    problems, _ = check_parquet_data(cfg.data)
    text = "\n".join(problems)
    assert "categorical column 'user' has type double" in text
    assert "numeric column 'price' has type string" in text
    assert "numeric column 'age' has 1 null, NaN or infinite value(s), e.g. row 1" in text
    assert "outside [0, 2)" in text
    missing = load_config(None, ["data.name=parquet", f"data.path={bad}", "data.kind=tabular",
                                 "data.num_classes=2", "model.family=recsys",
                                 "data.categorical_columns=[nope]"])
    assert "missing column(s) ['nope']" in "\n".join(check_parquet_data(missing.data)[0])


def test_tabular_configs_that_cannot_work_are_refused_with_the_keys_named():
    cases = {
        "model.family: got 'cnn' with data.kind 'tabular'": CLICKS + ["model.family=cnn"],
        "model.family: got 'recsys' with data.kind 'image'": ["model.family=recsys"],
        "data.kind: got 'image'; data.name 'clicks-mini' is 'tabular'":
            ["data.name=clicks-mini", "data.num_classes=2"],
        "model.buckets: got 5000 with data.num_buckets 1000": CLICKS + ["model.buckets=5000"],
        "compress.prune.kind: got 'structured' with data.kind 'tabular'":
            CLICKS + ["compress.prune.ratio=0.5", "compress.prune.kind=structured"],
        "tabular rows are not augmented": CLICKS + ["augment.rotation=10"],
        "data.label_column: got 'y', also named": [
            "data.name=parquet", "data.path=x.parquet", "data.kind=tabular",
            "data.num_classes=2", "model.family=recsys", "data.categorical_columns=[u, y]",
            "data.label_column=y"],
        "needs at least one": ["data.name=parquet", "data.path=x.parquet", "data.kind=tabular",
                               "data.num_classes=2", "model.family=recsys"],
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, overrides)


def test_search_on_bad_tabular_data_exits_2_naming_the_column_before_ray(tmp_path):
    bad = _write(tmp_path / "bad.parquet", user=["a", "b", "c"], price=[1.0, None, 2.0],
                 click=[0, 1, 0])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "distopt", "search", "--config", "configs/clicks.yaml",
         "--output", str(out), "data.name=parquet", f"data.path={bad}",
         "data.categorical_columns=[user]", "data.numeric_columns=[price]",
         "data.label_column=click", "data.column_buckets={}"], capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "numeric column 'price' has 1 null" in proc.stderr
    assert "Traceback" not in proc.stderr and "ray" not in proc.stderr.lower()
    assert not out.exists()


def test_a_multi_class_label_trains_on_accuracy_with_no_auc(tmp_path):
    """Tabular labels need not be binary: the class here is the row's category group, which
    the model must read from the hashed category column (AUC is for two classes only)."""
    import math

    from distopt import metrics as M
    from distopt.training import WorkerEnv, fit

    rng = np.random.default_rng(0)
    cat = rng.integers(0, 30, 4000)
    path = _write(tmp_path / "three.parquet", cat=[f"c{c}" for c in cat],
                  noise=rng.normal(0, 1, 4000), label=(cat % 3).astype(np.int64))
    cfg = load_config(None, ["data.name=parquet", f"data.path={path}", "data.kind=tabular",
                             "data.num_classes=3", "data.categorical_columns=[cat]",
                             "data.numeric_columns=[noise]", "model.family=recsys",
                             "model.buckets=256", "data.num_buckets=256", "model.embed_dim=4",
                             "model.dense_units=16", "train.epochs=4", "train.lr=0.01",
                             "train.precision=fp32"])
    out = fit(cfg, WorkerEnv(), lambda *a, **k: None, splits=load_splits(cfg.data))
    m = out["metrics"]
    assert m[M.VAL_ACCURACY] > 0.9 and math.isnan(m[M.VAL_AUC]) and math.isnan(m[M.VAL_LOGLOSS])
