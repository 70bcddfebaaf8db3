"""Early stopping measured directly: the trials a search stopped, re-run to completion, and how
many of them would have entered its front (issue 23).

For each rule and seed the default search (``configs/mnist_cnn.yaml``, embedded data, 3 minutes,
``mo_asha``) runs; every trial it stopped is then trained to the end (the same values and seed:
the run it would have been; one more Tune run, :func:`distopt.orchestration.retrain.retrain`),
and a re-run *would have entered the front* when no complete trial of the search dominates it
on (validation accuracy, bytes). Rules:

- ``spread``: the rung ranking alone (``search.keep_extremes=false``), the rule before issue 23;
- ``extremes``: a trial best at a rung on any objective always goes on (today's default).

Both rules see the same sampler seed and budget; the search's own numbers (trials, stopped,
best validation accuracy, best at <= 5,000 bytes, hypervolume) are reported beside the count.

    python benchmarks/early_stopping.py                 # 2 seeds x 2 rules, ~30 min
    python benchmarks/early_stopping.py --seeds 1 --rules extremes
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, table, write  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.config import load_config  # noqa: E402
from distopt.orchestration.capacity import concurrency  # noqa: E402
from distopt.orchestration.collect import collect  # noqa: E402
from distopt.orchestration.retrain import retrain  # noqa: E402
from distopt.orchestration.run import ensure_ray  # noqa: E402
from distopt.orchestration.tuning import run_search  # noqa: E402
from distopt.pareto import hypervolume  # noqa: E402
from distopt.results.report import save_config  # noqa: E402
from distopt.storage import Location  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (0.80, 6.0)  # as benchmarks/search_efficiency.py: 80% accuracy, 1 MB
RULES = {"spread": ["search.keep_extremes=false"], "extremes": ["search.keep_extremes=true"]}


def _point(r: dict[str, Any]) -> tuple[float, float]:
    return r[M.VAL_ACCURACY], r[M.SIZE_BYTES]


def _dominated(p: tuple[float, float], by: list[tuple[float, float]]) -> bool:
    return any(a >= p[0] and b <= p[1] and (a > p[0] or b < p[1]) for a, b in by)


def one(rule: str, seed: int, budget: float, workdir: Path) -> dict[str, Any]:
    cfg = load_config(ROOT / "configs" / "mnist_cnn.yaml",
                      RULES[rule] + [f"search.seed={seed}", f"search.time_budget_s={budget}",
                                     "search.num_trials=null", "search.max_concurrent=2",
                                     f"name=bench_es_{rule}_{seed}"])
    out = workdir / f"{rule}_{seed}"
    out.mkdir(parents=True)
    save_config(cfg, out)
    t0 = time.time()
    rows = collect(cfg, out, run_search(cfg, out))
    search_s = time.time() - t0
    done = [r for r in rows if r["status"] == "COMPLETE" and r[M.SIZE_BYTES] > 0]
    stopped = [r for r in rows if r["status"] == "STOPPED"]
    points = [_point(r) for r in done]
    t1 = time.time()
    jobs = [{"trial_id": r["trial_id"], "params": json.loads(r["params_json"])} for r in stopped]
    reruns = retrain(cfg, Location(str(out)), jobs, "rerun", concurrency(cfg)[0]) if jobs else []
    finished = [x for x in reruns if x.metrics is not None]
    entering = [x for x in finished if not _dominated(
        (x.metrics[M.VAL_ACCURACY], x.metrics[M.SIZE_BYTES]), points)]
    small = [r[M.VAL_ACCURACY] for r in done if r[M.SIZE_BYTES] <= 5000]
    pts = np.array(points, dtype=float).reshape(-1, 2)
    pts[:, 1] = np.log10(pts[:, 1])
    return {
        "rule": rule, "seed": seed, "budget_s": budget, "search_s": search_s,
        "rerun_s": time.time() - t1, "trials": sum(not r.get(M.PARENT_ID) for r in rows),
        "complete": len(done), "stopped": len(stopped), "rerun": len(finished),
        "would_enter_front": len(entering),
        "entering": [{"trial_id": x.job["trial_id"],
                      "val_accuracy": x.metrics[M.VAL_ACCURACY],
                      "size_bytes": x.metrics[M.SIZE_BYTES]} for x in entering],
        "best_val_accuracy": max((r[M.VAL_ACCURACY] for r in done), default=math.nan),
        "best_val_accuracy_at_most_5000_bytes": max(small, default=math.nan),
        "hypervolume": hypervolume(pts, ["max", "min"], REFERENCE),
    }


def summarize(runs: list[dict[str, Any]], name: str, out_dir: Path, command: str) -> None:
    rows = []
    for rule in RULES:
        mine = [r for r in runs if r["rule"] == rule]
        if not mine:
            continue
        mean = lambda k: sum(r[k] for r in mine) / len(mine)  # noqa: E731
        rows.append([rule, len(mine), mean("trials"), mean("stopped"),
                     f"{sum(r['would_enter_front'] for r in mine)} of "
                     f"{sum(r['rerun'] for r in mine)}",
                     mean("best_val_accuracy"), mean("best_val_accuracy_at_most_5000_bytes"),
                     mean("hypervolume")])
    text = table(["rule", "seeds", "trials", "stopped", "stopped that would enter the front",
                  "best val acc", "best val acc <= 5,000 B", "hypervolume"], rows)
    print(text)
    write(name, {"command": command, "runs": runs, "table": text}, out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--budget", type=float, default=180.0)
    ap.add_argument("--name", default="early_stopping")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(args.out) if args.out else RESULTS
    ensure_ray(include_dashboard=False)
    runs: list[dict[str, Any]] = []
    partial = out_dir / f"{args.name}.partial.json"
    with tempfile.TemporaryDirectory(prefix="distopt-es-bench-") as d:
        for seed in range(args.seeds):
            for rule in args.rules.split(","):
                r = one(rule, seed, args.budget, Path(d))
                runs.append(r)
                print(f"{rule:>9} seed {seed}: {r['trials']} trials, {r['stopped']} stopped, "
                      f"{r['would_enter_front']} of {r['rerun']} re-run would enter the front; "
                      f"best {r['best_val_accuracy']:.4f}, <=5 KB "
                      f"{r['best_val_accuracy_at_most_5000_bytes']:.4f}", flush=True)
                out_dir.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps({"runs": runs}, indent=2, default=float))
    summarize(runs, args.name, out_dir, "python benchmarks/early_stopping.py "
              + " ".join(sys.argv[1:]))
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
