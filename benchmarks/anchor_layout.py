"""Issue 23's reproduction gap, one suspect isolated: where the conv blocks pad and pool.

``configs/bitnetmcu_cnn16.yaml`` built the CNN-16 with ``model.block: depthwise`` before
``bitnet`` existed: a full 3x3 conv 1 -> 16, then two 3x3 depthwise convs, every conv 'same' padded
and followed by a 2x2 max-pool (16 -> 8 -> 4 -> 2: 64 features). BitNetMCU's published model
code convolves without padding and pools twice, the first time after two convs (16 -> 14 -> 12,
pool 6, -> 4, pool 2: also 64 features). Both have the same weight shapes (16,752 weights, no
biases) and the same head (64 -> 96 -> 96 -> 10); only the geometry differs. distopt builds
the anchor's as ``model.block: bitnet``.

Both trained side by side as plain float PyTorch models (no quantization, no augmentation),
full MNIST at 16x16 (bilinear, as ``data.resize``), the training split distopt uses (54,000
rows), Adam 1e-3 cosine to 0, batch 64, one thread each; test accuracy on the 10,000 test
images, per seed. Needs the four MNIST IDX files:

    python benchmarks/anchor_layout.py /path/to/mnist [--seeds 3] [--epochs 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("model.block depthwise", "anchor geometry (= model.block bitnet)")
HEADERS = ["layout", "weights", "test accuracy mean +- sd", "per seed"]


def run(layout: str, seed: int, epochs: int, mnist: str) -> dict[str, Any]:
    from distopt.config import load_config
    from distopt.data import load_splits
    from distopt.models import build_model, spec_from_config

    torch.set_num_threads(1)
    cfg_path = ROOT / "configs" / "bitnetmcu_cnn16.yaml"
    cfg = load_config(cfg_path, [f"data.path={mnist}"])
    splits = load_splits(cfg.data)

    def prep(x: Any) -> torch.Tensor:
        x = torch.tensor(x, dtype=torch.float32) / 255
        return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)

    x_tr, y_tr = prep(splits.x_train), torch.tensor(splits.y_train)
    x_te, y_te = prep(splits.x_test), torch.tensor(splits.y_test)
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    torch.manual_seed(seed)
    overrides = ["model.block=depthwise" if layout == LAYOUTS[0] else "model.block=bitnet"]
    net = build_model(spec_from_config(load_config(cfg_path, [f"data.path={mnist}",
                                                              *overrides])))
    per_epoch = len(x_tr) // 64
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x_tr))
        for i in range(per_epoch):
            b = perm[i * 64:(i + 1) * 64]
            loss = F.cross_entropy(net(x_tr[b]), y_tr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x_te).argmax(1) == y_te).float().mean())
    return {"layout": layout, "seed": seed, "test_accuracy": acc,
            "weights": sum(p.numel() for p in net.parameters()),
            "train_s": time.perf_counter() - t0}


def rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    out = []
    for layout in LAYOUTS:
        accs = [r["test_accuracy"] for r in runs if r["layout"] == layout]
        weights = next(r["weights"] for r in runs if r["layout"] == layout)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        out.append([layout, f"{weights:,}", f"{100 * statistics.mean(accs):.2f}% +- "
                    f"{100 * sd:.2f}", ", ".join(f"{100 * a:.2f}" for a in accs)])
    return out


def markdown(d: dict[str, Any]) -> str:
    """The section's text and table, from the JSON this script writes."""
    text = " ".join(__doc__.split("\n\n")[1:3]).replace("\n", " ")
    text = text.replace(" Needs the four MNIST IDX files:", "")
    note = f" ({d['note']}.)" if d.get("note") else ""
    return (f"`{d['command']}`: {text} {d['epochs']} epochs, seeds {d['seeds']}.{note}\n\n"
            + table(HEADERS, rows(d["runs"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mnist", help="directory with the four MNIST IDX files")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    jobs = [(layout, seed) for seed in range(args.seeds) for layout in LAYOUTS]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run, *zip(*jobs), [args.epochs] * len(jobs),
                             [args.mnist] * len(jobs)))
    print(table(HEADERS, rows(runs)))
    print(f"wrote {write('anchor_layout', {'command': f'python benchmarks/anchor_layout.py MNIST --seeds {args.seeds} --epochs {args.epochs}', 'epochs': args.epochs, 'seeds': list(range(args.seeds)), 'runs': runs})}")


if __name__ == "__main__":
    main()
