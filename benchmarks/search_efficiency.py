"""Search efficiency at equal wall-clock budgets: yesterday's search against today's default.

Setups (each the default config, ``configs/mnist_cnn.yaml``, on the embedded data, with the
same ``search.time_budget_s``; 2 trials at once on 2 cores):

- ``baseline``: the search as it was before issue 11: FIFO (every trial runs to the end, 2 dense
  epochs), each trial a Ray Train ``TorchTrainer`` job (``train.executor=ray_train``).
- ``default``: trials in their own (reused) Tune actors, multi-objective early stopping
  (``mo_asha``, up to 6 dense epochs), the shipped sampler (NSGA-II).
- ``default-random``: the same with random search, to see what the sampler adds;
  ``default-tpe``: the same with multivariate TPE.
- ``no-children``: the default without train once / compress many (``search.children=0``),
  to see what the children add.

For each run: hypervolume of (val accuracy, log10 bytes) above a fixed reference point, its
curve over wall time (PNG), per-trial overhead (median of ``trials.parquet``'s ``overhead_s``:
trial wall time minus time inside ``fit``) and the aggregate one (trial slots x wall time minus
all time inside ``fit``, per trial: actor start-up and scheduling gaps included), trials ended
and completed per minute, and the time the setup needs to reach the baseline's final
hypervolume. Each run's front is kept (JSON), and each setup's hypervolume is also given as a
share of the best known one: that of the union of every run's front at that budget, an upper
bound on what any sampler found here, against which "1.2x random" can be checked for room.
Each finished run is written to ``<name>.partial.json`` at once, so a long benchmark that is
interrupted keeps what it measured.

    python benchmarks/search_efficiency.py                         # 3 seeds x 180 s, ~30 min
    python benchmarks/search_efficiency.py --budgets 600 --seeds 2 --setups baseline,default \
        --name search_efficiency_600
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
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
from distopt.pareto import hypervolume  # noqa: E402
from distopt.orchestration.progress import read_trial_clock  # noqa: E402
from distopt.orchestration.collect import collect  # noqa: E402
from distopt.results.report import save_config  # noqa: E402
from distopt.orchestration.run import ensure_ray  # noqa: E402
from distopt.orchestration.tuning import run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Fixed for every run: 80% accuracy and 1 MB. Trials worse than either add nothing.
REFERENCE = (0.80, 6.0)
SLOTS = 2  # trials at once: 1-CPU trials on the 2-core machine

SETUPS: dict[str, list[str]] = {
    "baseline": ["train.executor=ray_train", "search.scheduler=fifo", "search.children=0",
                 "search.trial_overrides={train.epochs: 2, train.cpus_per_worker: 1, "
                 "compress.finetune_epochs: 1}"],
    "default": [],
    "default-random": ["search.sampler=random"],
    "default-tpe": ["search.sampler=tpe"],
    "no-children": ["search.children=0"],
}


def _hv(rows: list[dict[str, Any]]) -> float:
    pts = np.array([[r[M.VAL_ACCURACY], math.log10(r[M.SIZE_BYTES])] for r in rows]) \
        if rows else np.empty((0, 2))
    return hypervolume(pts, ["max", "min"], REFERENCE)


def one_search(setup: str, seed: int, budget: float, workdir: Path) -> dict[str, Any]:
    cfg = load_config(ROOT / "configs" / "mnist_cnn.yaml",
                      SETUPS[setup] + [f"search.seed={seed}", f"search.time_budget_s={budget}",
                                       "search.num_trials=null", f"search.max_concurrent={SLOTS}",
                                       f"name=bench_{setup}_{seed}"])
    out = workdir / f"{setup}_{seed}_{budget:g}"
    out.mkdir(parents=True)
    save_config(cfg, out)
    start = time.time()
    grid = run_search(cfg, out)
    wall = time.time() - start
    rows = collect(cfg, out, grid)
    clock = read_trial_clock(out)
    done = [r for r in rows if r["status"] == "COMPLETE"]
    # Hypervolume over wall time: each complete trial counts from the moment it ended (a child
    # from the moment its parent, which reports it, ended).
    def ended(r: dict[str, Any]) -> dict[str, float]:
        return clock.get(r.get(M.PARENT_ID) or r["trial_id"], {})

    ends = sorted(((ended(r)["end"] - start, r) for r in done if "end" in ended(r)),
                  key=lambda pair: pair[0])
    curve = [(t, _hv([r for _, r in ends[:i + 1]])) for i, (t, _) in enumerate(ends)]
    front = [r for r in done if r["pareto"]]
    sizes = [r[M.SIZE_BYTES] for r in front]
    # Tune trials (a parent's train_seconds covers its children, which are not Tune trials).
    tune_rows = [r for r in rows if not r.get(M.PARENT_ID)]
    in_fit = sum(r[M.TRAIN_SECONDS] for r in tune_rows
                 if r[M.TRAIN_SECONDS] == r[M.TRAIN_SECONDS])
    overhead = [r[M.OVERHEAD_S] for r in done if r[M.OVERHEAD_S] == r[M.OVERHEAD_S]]
    best = max(done, key=lambda r: r[M.VAL_ACCURACY], default=None)
    small = [r for r in done if r[M.SIZE_BYTES] <= 5000]
    return {
        "setup": setup, "seed": seed, "budget_s": budget, "wall_s": wall,
        "trials": len(tune_rows), "complete": len(done),
        "children": len(rows) - len(tune_rows),
        "stopped": sum(r["status"] == "STOPPED" for r in rows),
        "failed": sum(r["status"] == "FAILED" for r in rows),
        "hypervolume": _hv(done), "curve": curve,
        "front": len(front),
        "front_points": sorted([r[M.VAL_ACCURACY], r[M.SIZE_BYTES]] for r in front),
        "front_size_span": (max(sizes) / min(sizes)) if sizes else 0.0,
        "best_val_accuracy": best[M.VAL_ACCURACY] if best else math.nan,
        "best_val_accuracy_bytes": best[M.SIZE_BYTES] if best else math.nan,
        "best_val_accuracy_at_most_5000_bytes": max((r[M.VAL_ACCURACY] for r in small),
                                                    default=math.nan),
        "median_overhead_s": statistics.median(overhead) if overhead else math.nan,
        # Trial slots x wall time not spent inside fit(), per trial that ran.
        "aggregate_overhead_s": (SLOTS * wall - in_fit) / max(len(tune_rows), 1),
        "trials_per_min": len(tune_rows) / (wall / 60),
        # Configurations with a decoded, evaluated artifact (children included) per minute.
        "complete_per_min": len(done) / (wall / 60),
        "distinct_configs": len({r["params_json"] for r in rows}),
    }


def best_known_hv(runs: Any) -> float:
    """Hypervolume of the union of the runs' fronts: the best this benchmark found at all."""
    pts = [p for r in runs for p in r["front_points"]]
    return _hv([{M.VAL_ACCURACY: a, M.SIZE_BYTES: b} for a, b in pts])


def time_to_reach(curve: list[list[float]], target: float) -> float:
    """Seconds until the hypervolume curve first reaches ``target`` (inf if never)."""
    return next((t for t, hv in curve if hv >= target - 1e-12), math.inf)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"baseline": "tab:gray", "default": "tab:blue", "default-random": "tab:orange",
              "no-children": "tab:green", "default-tpe": "tab:purple"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs = [0.0] + [t for t, _ in r["curve"]] + [r["wall_s"]]
        ys = [0.0] + [hv for _, hv in r["curve"]] + [r["hypervolume"]]
        ax.step(xs, ys, where="post", color=colors.get(r["setup"], "k"), alpha=0.8,
                label=r["setup"] if r["seed"] == 0 else None)
    ax.set_xlabel("wall time, s (2 cores)")
    ax.set_ylabel(f"hypervolume above {REFERENCE}")
    ax.set_title("Hypervolume over wall time, every seed")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", default="180", help="comma-separated time budgets, seconds")
    ap.add_argument("--out", default=None, help="directory for the JSON and PNG")
    ap.add_argument("--name", default="search_efficiency", help="file name of the JSON and PNG")
    ap.add_argument("--summarize", default=None, metavar="PARTIAL_JSON",
                    help="no searches: summarize the runs a <name>.partial.json holds (an "
                         "interrupted benchmark's finished runs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    setups = args.setups.split(",")
    out_dir = Path(args.out) if args.out else RESULTS
    if args.summarize:
        runs = json.loads(Path(args.summarize).read_text())["runs"]
        setups = [s for s in setups if any(r["setup"] == s for r in runs)]
        summarize(runs, setups, args.name, out_dir)
        return
    ensure_ray(include_dashboard=False)
    runs = []
    with tempfile.TemporaryDirectory(prefix="distopt-search-bench-") as d:
        # Budgets and seeds outermost, setups inner: every setup sees the same conditions.
        for budget in (float(b) for b in args.budgets.split(",")):
            for seed in range(args.seeds):
                for setup in setups:
                    r = one_search(setup, seed, budget, Path(d))
                    runs.append(r)
                    print(f"{setup:>14} seed {seed} {budget:g} s: HV {r['hypervolume']:.4f}, "
                          f"{r['trials']} trials ({r['complete']} complete, {r['stopped']} "
                          f"stopped), best {r['best_val_accuracy']:.4f}, {r['wall_s']:.0f} s",
                          flush=True)
                    write(f"{args.name}.partial", {"reference": REFERENCE, "runs": runs},
                          out_dir)
    summarize(runs, setups, args.name, out_dir)


def summarize(runs: list[dict[str, Any]], setups: list[str], name: str, out_dir: Path) -> None:
    """Per budget and setup: means over seeds, ratios, the table, the plot and the JSON."""
    summary: dict[str, Any] = {}
    rows = []
    for budget in sorted({r["budget_s"] for r in runs}):
        base = [r for r in runs if r["budget_s"] == budget and r["setup"] == "baseline"]
        base_hv = {r["seed"]: r["hypervolume"] for r in base}
        best_known = best_known_hv(r for r in runs if r["budget_s"] == budget)
        summary[f"best_known@{budget:g}"] = best_known
        for setup in setups:
            rs = [r for r in runs if r["budget_s"] == budget and r["setup"] == setup]
            hv = [r["hypervolume"] for r in rs]
            # Time to reach the baseline's final hypervolume of the same seed, as a share of
            # the baseline's wall time: 0.5 or less is "2x hypervolume per CPU-hour".
            reach = [time_to_reach(r["curve"], base_hv[r["seed"]]) /
                     next(b["wall_s"] for b in base if b["seed"] == r["seed"])
                     for r in rs if r["seed"] in base_hv]
            s = {"hv_mean": statistics.mean(hv), "hv_by_seed": hv,
                 "vs_baseline": statistics.mean(hv) / statistics.mean(base_hv.values())
                 if base_hv else math.nan,
                 "time_to_baseline_hv_share": statistics.median(reach) if reach else math.nan,
                 "trials_mean": statistics.mean(r["trials"] for r in rs),
                 "complete_mean": statistics.mean(r["complete"] for r in rs),
                 "trials_per_min": statistics.mean(r["trials_per_min"] for r in rs),
                 "complete_per_min": statistics.mean(r["complete_per_min"] for r in rs),
                 "overhead_s_median": statistics.median(r["median_overhead_s"] for r in rs),
                 "aggregate_overhead_s": statistics.mean(r["aggregate_overhead_s"] for r in rs),
                 "best_val_accuracy_mean": statistics.mean(r["best_val_accuracy"] for r in rs),
                 "best_at_most_5000_bytes_mean": statistics.mean(
                     r["best_val_accuracy_at_most_5000_bytes"] for r in rs),
                 "front_size_span_min": min(r["front_size_span"] for r in rs),
                 "share_of_best_known_hv": statistics.mean(hv) / best_known}
            summary[f"{setup}@{budget:g}"] = s
            rows.append([setup, f"{budget:g}", len(rs), f"{s['hv_mean']:.3f}",
                         " / ".join(f"{h:.3f}" for h in hv), f"{s['vs_baseline']:.2f}x",
                         f"{s['time_to_baseline_hv_share']:.2f}",
                         f"{s['trials_mean']:.0f} ({s['complete_mean']:.0f})",
                         f"{s['complete_per_min']:.1f}",
                         f"{s['overhead_s_median']:.2f}", f"{s['aggregate_overhead_s']:.1f}",
                         f"{s['best_val_accuracy_mean']:.4f}",
                         f"{s['best_at_most_5000_bytes_mean']:.4f}",
                         f"{s['front_size_span_min']:.0f}x",
                         f"{s['share_of_best_known_hv']:.2f}"])
        for sampler in ("default", "default-tpe"):
            if f"{sampler}@{budget:g}" in summary and f"default-random@{budget:g}" in summary:
                ratio = summary[f"{sampler}@{budget:g}"]["hv_mean"] / \
                    summary[f"default-random@{budget:g}"]["hv_mean"]
                summary[f"{sampler}_vs_random@{budget:g}"] = ratio
                print(f"{budget:g} s: {sampler} / default-random hypervolume = {ratio:.3f}")
    print()
    print(f"hypervolume of (val accuracy max, log10 bytes min) above reference {REFERENCE}")
    print(table(HEADERS, rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(runs, out_dir / f"{name}.png")
    path = write(name, {"reference": REFERENCE, "setups": SETUPS, "runs": runs,
                                       "summary": summary, "table": rows}, out_dir)
    print(f"\nwrote {path}")


HEADERS = ["setup", "budget s", "seeds", "HV mean", "HV by seed", "vs baseline",
           "time to baseline HV (share)", "trials (complete configs)",
           "configs evaluated / min", "overhead s / trial (median)",
           "aggregate overhead s / trial", "best val acc", "best val acc <= 5 KB",
           "min front span", "share of best-known HV"]

if __name__ == "__main__":
    main()
