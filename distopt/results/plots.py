"""The report's two figures: the accuracy-size front and the hypervolume by trial (matplotlib,
Agg backend, imported only when a figure is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distopt import metrics as M

__all__ = ["plot_front", "plot_hypervolume"]


def plot_front(rows: list[dict[str, Any]], path: Path, title: str,
               quality: str = M.VAL_ACCURACY) -> None:
    """Every complete trial and the front: ``quality`` (a validation metric) against bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "COMPLETE"]
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r[M.SIZE_BYTES])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r[M.SIZE_BYTES] for r in done], [r[quality] for r in done], s=18,
               color="0.6", label="trials")
    ax.step([r[M.SIZE_BYTES] for r in front], [r[quality] for r in front], where="post",
            color="C3", lw=1.2)
    ax.scatter([r[M.SIZE_BYTES] for r in front], [r[quality] for r in front], s=36,
               color="C3", label="Pareto front", zorder=3)
    for r in front:
        ax.annotate(r["trial_id"][-5:], (r[M.SIZE_BYTES], r[quality]), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (bytes, log scale)")
    ax.set_ylabel(f"validation {M.QUALITY_LABEL[quality]} (decoded artifact)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_hypervolume(xs: list[int], ys: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o", ms=3)
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
