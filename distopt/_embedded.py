"""Build the embedded MNIST subset (``distopt/_data/mnist_mini.parquet``) from the IDX files.

Reproducible: the same IDX files give the same bytes. Run from the repository root::

    python -m distopt._embedded ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distopt.config import DataConfig
from distopt.data import load_mnist_arrays, mini_path

log = logging.getLogger(__name__)

TRAIN_PER_CLASS = 1200
TEST_PER_CLASS = 200
SEED = 20261128


def stratified(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of every class, drawn without replacement, in ascending order."""
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False)
             for c in range(int(y.max()) + 1)]
    return np.sort(np.concatenate(picks))


def build(source: Path, out: Path) -> dict[str, object]:
    x_tr, y_tr, x_te, y_te = load_mnist_arrays(DataConfig(name="mnist", path=str(source)))
    rng = np.random.default_rng(SEED)
    tr, te = stratified(y_tr, TRAIN_PER_CLASS, rng), stratified(y_te, TEST_PER_CLASS, rng)
    images = np.concatenate([x_tr[tr], x_te[te]]).reshape(-1, 784)
    labels = np.concatenate([y_tr[tr], y_te[te]]).astype(np.uint8)
    split = ["train"] * len(tr) + ["test"] * len(te)
    table = pa.table({
        "image": pa.FixedSizeListArray.from_arrays(pa.array(images.ravel(), pa.uint8()), 784),
        "label": pa.array(labels, pa.uint8()),
        "split": pa.array(split).dictionary_encode(),
        # Index into the original MNIST file, so the subset can be traced back.
        "source_index": pa.array(np.concatenate([tr, te]).astype(np.int32)),
    })
    pq.write_table(table, out, compression="zstd", compression_level=19, use_dictionary=False,
                   row_group_size=len(labels))
    meta = {"sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "train": len(tr),
            "test": len(te), "seed": SEED, "bytes": out.stat().st_size,
            "source": "MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0"}
    (out.parent / "mnist_mini.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source", type=Path, help="directory with the four MNIST IDX files")
    ap.add_argument("--out", type=Path, default=mini_path())
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    log.info("wrote %s: %s", args.out, build(args.source, args.out))


if __name__ == "__main__":
    main()
