"""The headline result: a finished full-MNIST search's Pareto front (test accuracy of every
front model, measured on its decoded artifact by the search's report) against Deep
Compression's published LeNet results.

Anchors: Han, Mao and Dally, "Deep Compression", ICLR 2016, Table 1 (stored model sizes):
LeNet-300-100 compressed to 27 KB at 1.58% top-1 error, LeNet-5 to 44 KB at 0.74% error.
Goal (issue 7): a front model with >= 99.3% test accuracy at <= 16 KB and one with >= 99.0% at
<= 6 KB (KB = 1,000 bytes here; with 1,024 the goals are slightly looser).

    python distopt/search.py --config configs/mnist_cnn_full.yaml data.path=PATH
    python benchmarks/headline.py results/mnist_cnn_full [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.orchestration.report import load_trials  # noqa: E402

ANCHORS = [  # (label, bytes, test accuracy)
    ("Deep Compression LeNet-300-100", 27_000, 1 - 0.0158),
    ("Deep Compression LeNet-5", 44_000, 1 - 0.0074),
]
GOALS = [(0.993, 16_000), (0.990, 6_000)]  # (min test accuracy, max bytes)


def dominates(size: float, acc: float, anchor_size: float, anchor_acc: float) -> bool:
    return size <= anchor_size and acc >= anchor_acc and (size < anchor_size or acc > anchor_acc)


def markdown(payload: dict[str, Any]) -> str:
    """The front, the anchors and the goals as Markdown tables (printed here, and on the
    benchmark page by run_all.py)."""
    front = payload["front"]
    keys = [k for k in (front[0] if front else {}) if k.startswith("param.")]
    parts = [
        table(["trial", "bytes", "val acc", "test acc"] + [k[6:] for k in keys],
              [[f["trial_id"], f"{f[M.SIZE_BYTES]:,.0f}", f"{f[M.VAL_ACCURACY]:.4f}",
                f"{f[M.TEST_ACCURACY]:.4f}"] + [f[k] for k in keys] for f in front]),
        table(["anchor (Han et al. 2016)", "bytes", "test acc", "front models dominating it"],
              [[a["anchor"], f"{a['bytes']:,}", f"{a['test_accuracy']:.4f}",
                len(a["dominated_by"])] for a in payload["anchors"]]),
        table(["goal", "met", "best front model within the size"],
              [[g["goal"], "yes" if g["met_by"] else "no",
                "-" if g["best_within_size"] is None else
                f"{g['best_within_size']['test_accuracy']:.4f} at "
                f"{g['best_within_size']['bytes']:,.0f} B"] for g in payload["goals"]]),
    ]
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--wall-s", type=float, default=None,
                    help="the search's measured wall time, recorded beside the front")
    args = ap.parse_args()
    rows = load_trials(args.experiment)
    front = sorted((r for r in rows if r["pareto"] and r["status"] == "COMPLETE"),
                   key=lambda r: r[M.SIZE_BYTES])
    done = [r for r in rows if r["status"] == "COMPLETE"]
    keys = [k for k in rows[0] if k.startswith("param.")] if rows else []
    print(f"{args.experiment}: {len(rows)} trials, {len(done)} complete, front of {len(front)}\n")
    verdicts = []
    for label, size, acc in ANCHORS:
        beaters = [r for r in front
                   if dominates(r[M.SIZE_BYTES], r[M.TEST_ACCURACY], size, acc)]
        verdicts.append({"anchor": label, "bytes": size, "test_accuracy": acc,
                         "dominated_by": [r["trial_id"] for r in beaters]})
    goals = []
    for min_acc, max_bytes in GOALS:
        ok = [r for r in front if r[M.TEST_ACCURACY] >= min_acc and r[M.SIZE_BYTES] <= max_bytes]
        best = max((r for r in front if r[M.SIZE_BYTES] <= max_bytes),
                   key=lambda r: r[M.TEST_ACCURACY], default=None)
        goals.append({"goal": f">= {100 * min_acc:.1f}% at <= {max_bytes:,} B",
                      "met_by": [r["trial_id"] for r in ok],
                      "best_within_size": None if best is None else
                      {"trial": best["trial_id"], "bytes": best[M.SIZE_BYTES],
                       "test_accuracy": best[M.TEST_ACCURACY]}})
    payload: dict[str, Any] = {
        "experiment": str(args.experiment), "trials": len(rows), "complete": len(done),
        "search_wall_s": args.wall_s,
        "front": [{k: r[k] for k in ["trial_id", M.SIZE_BYTES, M.VAL_ACCURACY, M.TEST_ACCURACY]
                   + keys} for r in front],
        "anchors": verdicts, "goals": goals}
    print(markdown(payload))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step([r[M.SIZE_BYTES] for r in front], [r[M.TEST_ACCURACY] for r in front], where="post",
            color="C3", lw=1.2)
    ax.scatter([r[M.SIZE_BYTES] for r in front], [r[M.TEST_ACCURACY] for r in front], s=36,
               color="C3", label="distopt front (test acc. of decoded files)", zorder=3)
    for (label, size, acc), marker in zip(ANCHORS, ("s", "D")):
        ax.scatter([size], [acc], marker=marker, s=60, color="k", label=label, zorder=4)
    for min_acc, max_bytes in GOALS:
        ax.plot([max_bytes], [min_acc], marker="+", ms=12, color="C0")
    ax.set_xscale("log")
    low = min(0.97, *(a for _, _, a in ANCHORS))
    ax.set_ylim(low - 0.005, 1.0)  # the region of the anchors and goals
    hidden = sum(r[M.TEST_ACCURACY] < low - 0.005 for r in front)
    ax.set_xlabel("artifact size (bytes, log scale)"
                  + (f"; {hidden} front models below the axis" if hidden else ""))
    ax.set_ylabel("MNIST test accuracy")
    ax.set_title("full MNIST: distopt front vs Deep Compression (+: issue goals)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "headline.png", dpi=120)
    plt.close(fig)
    print(f"\nwrote {write('headline', payload, args.out)} and {args.out / 'headline.png'}")


if __name__ == "__main__":
    main()
