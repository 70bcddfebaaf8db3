"""Issue 23's reproduction: BitNetMCU's CNN-16 trained by distopt (``configs/bitnetmcu_cnn16.yaml``)
against the anchor's published point (99.06% test at 5,360 bytes of packed weights), per seed,
and the recipe's steps each undone alone (a variant: the config with some keys overridden).

Every run is ``distopt train`` of the config on full MNIST (the four IDX files), one CPU each,
two at a time; the accuracy is the integer reference's on the decoded file (the 10,000 test
images), the float validation accuracy the dense model's at the end of dense training (before
the quantization-aware epochs). Runs already made (their output directories, each with its
``config.yaml`` and ``metrics.json``) can be collected instead of trained again; a run's variant
is read from its ``config.yaml``: the keys where it differs from the committed config.

    python benchmarks/reproduction.py --mnist /path/to/mnist --seeds 0 1 2 \\
        [--variant "odd levels=compress.quantize.odd_levels=true" ...] [--work DIR]
    python benchmarks/reproduction.py --collect DIR [DIR ...]   # runs made by hand
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bitnetmcu_cnn16.yaml"
ANCHOR = {"test_accuracy": 0.9906, "weight_flash_bytes": 5_360}
IGNORED = {"data.path", "data.cache_dir", "train.seed",  # where and which run: not a variant
           "train.cpus_per_worker"}
HEADERS = ["variant (the config, with)", "seeds", "test acc mean +- sd", "per seed",
           "float val", "flash B", "packed weights B", "file B", "RAM B"]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _loaded(path: Path) -> dict[str, Any]:
    """A config file as every key reads it (keys it predates at their defaults: what the code
    did then)."""
    from distopt.config import load_config

    return _flat(load_config(path).public_dict())


def collect(run_dir: Path, base: dict[str, Any]) -> dict[str, Any]:
    """One finished run: its variant (keys differing from the committed config) and numbers."""
    cfg = _loaded(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    dense = [h for h in history if h.get("phase") == "train"]
    diff = {k: v for k, v in cfg.items() if k not in IGNORED and base.get(k) != v}
    return {"variant": ", ".join(f"{k}={v}" for k, v in sorted(diff.items())) or "as committed",
            "seed": cfg["train.seed"], "test_accuracy": metrics["test_accuracy"],
            "val_accuracy": metrics["val_accuracy"],
            "float_val_accuracy": dense[-1]["val_accuracy"] if dense else None,
            **{k: metrics[k] for k in ("flash_bytes", "weight_flash_bytes", "size_bytes",
                                       "peak_ram_bytes", "train_seconds")},
            "dir": str(run_dir)}


def train(mnist: str, seed: int, overrides: list[str], out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "distopt", "train", "--config", str(CONFIG),
                    "--output", str(out), f"data.path={mnist}", "train.cpus_per_worker=1",
                    f"train.seed={seed}", *overrides], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return out


def rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: (r["variant"] != "as committed", r["variant"],
                                         r["seed"])):
        groups.setdefault(r["variant"], []).append(r)
    out = []
    for variant, rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        sd = f" +- {100 * statistics.stdev(acc):.2f}" if len(acc) > 1 else " (one run)"
        fv = [r["float_val_accuracy"] for r in rs if r["float_val_accuracy"] is not None]
        out.append([variant, len(rs), f"{100 * statistics.mean(acc):.2f}%{sd}",
                    ", ".join(f"{100 * a:.2f}" for a in acc),
                    f"{100 * statistics.mean(fv):.2f}%" if fv else "-",
                    f"{rs[0]['flash_bytes']:,}", f"{rs[0]['weight_flash_bytes']:,}",
                    f"{statistics.mean(r['size_bytes'] for r in rs):,.0f}",
                    f"{rs[0]['peak_ram_bytes']:,}"])
    return out


def markdown(d: dict[str, Any]) -> str:
    return table(HEADERS, rows(d["runs"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", help="directory of the four MNIST IDX files (to train)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL=key=value[,key=value]: also train the config with these")
    ap.add_argument("--work", type=Path, default=ROOT / "results" / "reproduction")
    ap.add_argument("--collect", type=Path, nargs="*", default=[],
                    help="finished run directories to record instead of training")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    base = _loaded(CONFIG)
    dirs = list(args.collect)
    if args.mnist:
        variants = [("committed", [])] + [(v.split("=", 1)[0], v.split("=", 1)[1].split(","))
                                           for v in args.variant]
        jobs = [(label, overrides, seed) for label, overrides in variants for seed in args.seeds]
        slug = lambda label: "".join(c if c.isalnum() else "_" for c in label)  # noqa: E731
        with ThreadPoolExecutor(2) as pool:
            dirs += list(pool.map(lambda j: train(
                args.mnist, j[2], j[1], args.work / f"{slug(j[0])}_s{j[2]}"), jobs))
    runs = [collect(d, base) for d in dirs]
    payload = {"command": "python benchmarks/reproduction.py " + " ".join(sys.argv[1:]),
               "config": str(CONFIG.relative_to(ROOT)), "anchor": ANCHOR, "runs": runs}
    path = write("reproduction", payload, *([args.out] if args.out else []))
    print(markdown(payload))
    print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
