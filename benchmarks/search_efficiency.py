"""Search efficiency: NSGA-II and TPE against random search at an equal trial budget.

Runs the default search (``configs/mnist_cnn.yaml``, embedded data) once per sampler and seed,
and reports the hypervolume of (validation accuracy, log10 bytes) above a fixed reference point,
the wall time of each search, the front's size span, and the per-trial overhead (Tune trial time
minus the time inside the training loop: Ray Train worker-group start and teardown).

    python benchmarks/search_efficiency.py                  # 3 samplers x 3 seeds, ~30 min
    python benchmarks/search_efficiency.py --seeds 1 --samplers nsga2,random
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.config import load_config  # noqa: E402
from distopt.pareto import hypervolume  # noqa: E402
from distopt.report import collect, save_config  # noqa: E402
from distopt.run import ensure_ray  # noqa: E402
from distopt.tuning import run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Fixed for every run: 80% accuracy and 1 MB. Trials worse than either add nothing.
REFERENCE = (0.80, 6.0)


def one_search(config: Path, sampler: str, seed: int, overrides: list[str], workdir: Path
               ) -> dict[str, Any]:
    cfg = load_config(config, overrides + [f"search.sampler={sampler}", f"search.seed={seed}",
                                           f"name=bench_{sampler}_{seed}"])
    out = workdir / f"{sampler}_{seed}"
    out.mkdir(parents=True)
    save_config(cfg, out)
    t0 = time.perf_counter()
    grid = run_search(cfg, out)
    wall = time.perf_counter() - t0
    rows = collect(cfg, out, grid)
    done = [r for r in rows if r["status"] == "COMPLETE"]
    pts = np.array([[r[M.VAL_ACCURACY], np.log10(r[M.SIZE_BYTES])] for r in done]) \
        if done else np.empty((0, 2))
    front = [r for r in done if r["pareto"]]
    sizes = [r[M.SIZE_BYTES] for r in front]
    overhead = [r["time_total_s"] - r["train_seconds"] for r in done]
    train = [r["train_seconds"] for r in done]
    return {
        "sampler": sampler, "seed": seed, "trials": len(rows), "complete": len(done),
        "hypervolume": hypervolume(pts, ["max", "min"], REFERENCE), "wall_s": wall,
        "front": len(front), "front_size_span": (max(sizes) / min(sizes)) if sizes else 0.0,
        "best_val_accuracy": max((r[M.VAL_ACCURACY] for r in done), default=float("nan")),
        "median_overhead_s": statistics.median(overhead) if overhead else float("nan"),
        "median_train_s": statistics.median(train) if train else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist_cnn.yaml")
    ap.add_argument("--samplers", default="nsga2,tpe,random")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None, help="directory for search_efficiency.json")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every search")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_ray(include_dashboard=False)
    runs = []
    with tempfile.TemporaryDirectory(prefix="distopt-search-bench-") as d:
        # Seeds outermost, samplers inner: every sampler sees the same machine conditions.
        for seed in range(args.seeds):
            for sampler in args.samplers.split(","):
                r = one_search(args.config, sampler, seed, args.overrides, Path(d))
                runs.append(r)
                print(f"{sampler:>6} seed {seed}: hypervolume {r['hypervolume']:.4f}, "
                      f"{r['complete']}/{r['trials']} complete, {r['wall_s']:.0f} s", flush=True)
    by = {s: [r for r in runs if r["sampler"] == s] for s in args.samplers.split(",")}
    base = statistics.mean(r["hypervolume"] for r in by.get("random", runs)) or float("nan")
    rows, summary = [], {}
    for s, rs in by.items():
        hv = [r["hypervolume"] for r in rs]
        summary[s] = {"hv_mean": statistics.mean(hv), "hv_by_seed": hv,
                      "vs_random": statistics.mean(hv) / base,
                      "wall_s_mean": statistics.mean(r["wall_s"] for r in rs),
                      "overhead_s_median": statistics.median(r["median_overhead_s"] for r in rs),
                      "train_s_median": statistics.median(r["median_train_s"] for r in rs),
                      "front_size_span_min": min(r["front_size_span"] for r in rs)}
        rows.append([s, len(rs), summary[s]["hv_mean"], " / ".join(f"{h:.4f}" for h in hv),
                     f"{summary[s]['vs_random']:.2f}x", summary[s]["wall_s_mean"],
                     summary[s]["overhead_s_median"], summary[s]["train_s_median"],
                     f"{summary[s]['front_size_span_min']:.0f}x"])
    print()
    print(f"hypervolume of (val accuracy max, log10 bytes min) above reference {REFERENCE}")
    print(table(["sampler", "seeds", "HV mean", "HV by seed", "vs random", "wall s",
                 "overhead s / trial", "in-loop s / trial", "min front span"], rows))
    path = write("search_efficiency", {"reference": REFERENCE, "runs": runs, "summary": summary,
                                       "config": str(args.config), "overrides": args.overrides},
                 Path(args.out) if args.out else Path(__file__).parent / "results")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
