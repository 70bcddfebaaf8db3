"""The recommendation family on clicks-mini (issue 26): what each compression knob buys on one
base, alone, over seeds; and the default clicks search's front, with where its bytes are.

Base: ``configs/clicks.yaml``'s model (tables of 4,096 rows for users and items, 256 for
category and hour, 32 for device: ``data.column_buckets``; 8 dimensions, dot interaction, dense
32), 5 dense epochs, 1 fine-tune epoch, 8-bit weights. Knobs, each alone:

- ``one num_buckets``: ``data.column_buckets`` {}: every column hashed into 4,096 buckets, so
  the few-valued columns' tables have 4,096 rows too;
- ``buckets``: ``model.buckets`` 1024 / 256 / 64 rows per table (the 4,096 hashed ids fold
  onto them, :func:`distopt.models.fold_ids`);
- ``dim``: ``model.embed_dim`` 4 / 2;
- ``row bits``: ``compress.quantize.bits_embedding`` 4 / 2 (the tables only; the rest 8-bit);
- ``row pruning``: ``compress.prune_rows.ratio`` 0.5 / 0.8 (each table's lowest-norm rows
  zeroed and held at zero through the fine-tune).

Every number is the decoded file's: AUC on the 6,000 validation and 10,000 test rows; *bytes*
the whole ``.dopt`` file (storage: zero rows cost a few bits in its sparse index); *flash* what a
device keeps to run the file in place (packed codes at their bit width, float32 scales and
biases: zero rows cost as much as any); *tables*: the embedding tables' share of flash, and of
bytes (the file's length minus that of the same decoded model with every table zero, re-encoded
at the same bits, over the re-encoded full file's length). Runs in this process (no Ray).

    python benchmarks/recsys.py [--seeds 3] [--skip-search]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.compress import decode, encode  # noqa: E402
from distopt.config import load_config  # noqa: E402
from distopt.data import load_splits  # noqa: E402
from distopt.training import WorkerEnv, fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "clicks.yaml"
BASE = ["model.buckets=4096", "model.embed_dim=8", "model.interaction=dot",
        "model.dense_units=32", "train.precision=fp32"]
SETUPS: dict[str, list[str]] = {
    "base (4096 rows, dim 8, 8-bit)": [],
    "one num_buckets for all columns": ["data.column_buckets={}"],
    "buckets 1024": ["model.buckets=1024"],
    "buckets 256": ["model.buckets=256"],
    "buckets 64": ["model.buckets=64"],
    "dim 4": ["model.embed_dim=4"],
    "dim 2": ["model.embed_dim=2"],
    "row bits 4": ["compress.quantize.bits_embedding=4"],
    "row bits 2": ["compress.quantize.bits_embedding=2"],
    "row pruning 0.5": ["compress.prune_rows.ratio=0.5"],
    "row pruning 0.8": ["compress.prune_rows.ratio=0.8"],
}
HEADERS = ["setup", "val AUC", "test AUC mean +- sd", "bytes", "flash", "tables: % of flash",
           "tables: % of bytes"]


def table_share(artifact: bytes) -> float:
    """The embedding tables' share of a file's bytes: 1 - (the decoded model with every table
    zero, re-encoded at the file's bits) / (the decoded model re-encoded as it is)."""
    dec = decode(artifact)
    bits = {t["name"]: int(t["bits"]) for t in dec.tensors if "index" in t}
    model = dec.model
    full = len(encode(model, 8, dec.meta, bits))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.weight.zero_()
    return 1 - len(encode(model, 8, dec.meta, bits)) / full


def measure(overrides: list[str], seed: int, splits: Any) -> dict[str, Any]:
    cfg = load_config(CONFIG, [*BASE, *overrides, f"train.seed={seed}"])
    out = fit(cfg, WorkerEnv(), lambda *a, **k: None, splits=splits, evaluate_test=True)
    m = out["metrics"]
    return {"seed": seed, M.VAL_AUC: m[M.VAL_AUC], M.TEST_AUC: m[M.TEST_AUC],
            M.SIZE_BYTES: m[M.SIZE_BYTES], M.FLASH_BYTES: m[M.FLASH_BYTES],
            M.EMBEDDING_FLASH_BYTES: m[M.EMBEDDING_FLASH_BYTES],
            "table_share_of_bytes": table_share(out["artifact"])}


def knobs(seeds: int) -> list[dict[str, Any]]:
    splits = load_splits(load_config(CONFIG).data)
    rows = []
    for name, overrides in SETUPS.items():
        runs = [measure(overrides, s, splits) for s in range(seeds)]
        test = [r[M.TEST_AUC] for r in runs]
        rows.append({"setup": name, "overrides": overrides, "runs": runs,
                     "val_auc_mean": statistics.mean(r[M.VAL_AUC] for r in runs),
                     "test_auc_mean": statistics.mean(test),
                     "test_auc_sd": statistics.stdev(test) if len(test) > 1 else 0.0,
                     "bytes_mean": statistics.mean(r[M.SIZE_BYTES] for r in runs),
                     "flash": runs[0][M.FLASH_BYTES],
                     "table_flash_share": runs[0][M.EMBEDDING_FLASH_BYTES]
                     / runs[0][M.FLASH_BYTES],
                     "table_bytes_share": statistics.mean(r["table_share_of_bytes"]
                                                          for r in runs)})
        print(name, f"{rows[-1]['test_auc_mean']:.4f}", f"{rows[-1]['bytes_mean']:,.0f}",
              file=sys.stderr)
    return rows


def knob_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["setup"], f"{r['val_auc_mean']:.4f}",
             f"{r['test_auc_mean']:.4f} +- {r['test_auc_sd']:.4f}", f"{r['bytes_mean']:,.0f}",
             f"{r['flash']:,}", f"{100 * r['table_flash_share']:.1f}",
             f"{100 * r['table_bytes_share']:.1f}"] for r in rows]


def default_search() -> dict[str, Any]:
    """``configs/clicks.yaml`` as a user runs it; its front with the tables' shares."""
    from distopt.results.trials import load_trials

    out = Path(tempfile.mkdtemp(prefix="distopt-clicks-")) / "clicks"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), "--config",
                        str(CONFIG), "--output", str(out)], capture_output=True, text=True,
                       cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"clicks search failed:\n{p.stderr[-2000:]}")
    rows = load_trials(out)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r[M.SIZE_BYTES])
    return {"command": "python distopt/search.py --config configs/clicks.yaml", "wall_s": wall,
            "trials": len(rows), "complete": sum(r["status"] == "COMPLETE" for r in rows),
            "front": [{"trial_id": r["trial_id"],
                       "params": {k.removeprefix("param."): r[k] for k in r
                                  if k.startswith("param.")},
                       M.VAL_AUC: r[M.VAL_AUC], M.TEST_AUC: r[M.TEST_AUC],
                       M.SIZE_BYTES: r[M.SIZE_BYTES], M.FLASH_BYTES: r[M.FLASH_BYTES],
                       "table_flash_share": r[M.EMBEDDING_FLASH_BYTES] / r[M.FLASH_BYTES],
                       "table_bytes_share": table_share((out / r["artifact"]).read_bytes())}
                      for r in front]}


def _short(key: str) -> str:
    """A searched key as a column reads it: model.buckets -> buckets,
    compress.prune_rows.ratio -> prune_rows."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "ratio" else parts[-1]


def front_rows(front: list[dict[str, Any]]) -> list[list[Any]]:
    return [[f["trial_id"], ", ".join(f"{_short(k)} {v:.3g}" if isinstance(v, float)
                                      else f"{_short(k)} {v}" for k, v in f["params"].items()),
             f"{f[M.VAL_AUC]:.4f}", f"{f[M.TEST_AUC]:.4f}", f"{int(f[M.SIZE_BYTES]):,}",
             f"{int(f[M.FLASH_BYTES]):,}", f"{100 * f['table_flash_share']:.1f}",
             f"{100 * f['table_bytes_share']:.1f}"] for f in front]


FRONT_HEADERS = ["trial", "values", "val AUC", "test AUC", "bytes", "flash",
                 "tables: % of flash", "tables: % of bytes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--skip-search", action="store_true")
    args = ap.parse_args()
    payload: dict[str, Any] = {"command": f"python benchmarks/recsys.py --seeds {args.seeds}",
                               "seeds": list(range(args.seeds)), "knobs": knobs(args.seeds)}
    print(table(HEADERS, knob_rows(payload["knobs"])))
    if not args.skip_search:
        payload["search"] = default_search()
        print(table(FRONT_HEADERS, front_rows(payload["search"]["front"])))
    print(f"wrote {write('recsys', payload)}")


if __name__ == "__main__":
    main()
