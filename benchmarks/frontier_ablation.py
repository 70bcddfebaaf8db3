"""What distillation, mixed bit widths, input resolution, conv block kinds, the augmentation
share and lower bit widths each add to one small compressed model, alone, against the same base,
over seeds (issue 14's ablation, with issue 23's building blocks), and what artifact format v2
saves over v1 on each (the same weights, re-encoded).

Base: a small CNN (8-16 channels, dense 32) on the embedded MNIST subset, 8 dense epochs,
80% global magnitude pruning + 2 fine-tune epochs, 4-bit weights. Setups change one thing:

- ``+distill``: ``train.distill_alpha`` 0.5 at T = 4 from a seed CNN teacher (6 epochs, dense
  float32), trained once for all seeds;
- ``+mixed bits``: the first conv and the classifier at 8 bits, the rest at 4;
- ``16x16 input``: ``data.resize`` 16 (bilinear, in training, evaluation and the file);
- ``same blocks`` / ``separable blocks`` / ``depthwise blocks``: ``model.block`` same /
  separable / depthwise (BitNetMCU's: depthwise convs alone after the first, every block 8
  channels wide);
- ``no biases``: ``model.bias`` false (no layer has a bias, as BitNetMCU's);
- ``aug prob 0.5``: ``augment.prob`` 0.5, half the training images seen clean each epoch (the
  anchor's clean + augmented copy, at the same number of steps);
- ``3-bit`` / ``ternary``: ``compress.quantize.bits`` 3 / 2;
- ``clusters 15`` / ``clusters 7``: weight clustering (``compress.cluster.k``: each weight
  tensor's non-zero weights share 15 or 7 fine-tuned values, a codebook: 4- or 3-bit indexes)
  instead of 4-bit integer codes;
- ``per-tensor scales``: ``compress.quantize.scales`` tensor (one scale a layer);
- ``cosine fine-tune``: ``compress.finetune_schedule`` cosine (the fine-tune lr to 0);
- ``no pruning`` / ``no pruning, odd levels``: ``compress.prune.ratio`` 0, and with it
  ``compress.quantize.odd_levels`` (16 levels without a zero at 4 bits; they hold no pruned
  zeros, so they are compared with the unpruned model).

Bytes are format v2's (the default), split into header / index / scales+biases / values; the
``v1 bytes`` column is the same decoded weights written in format v1, checked to decode to the
same parameters.

Every number is the decoded file's: test accuracy on the 2,000 embedded test images, bytes of
the whole file. Runs in this process (no Ray), ~10 minutes a seed on 2 cores.

    python benchmarks/frontier_ablation.py [--seeds 3]
    python benchmarks/frontier_ablation.py --setups blocks --name frontier_blocks  # issue 23's

*flash mean*: what a device keeps to run the weight-only file in place (packed codes, float32
scales and biases: ``flash_bytes``), absent from runs made before it was recorded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

import torch  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.compress import decode, encode  # noqa: E402
from distopt.config import load_config  # noqa: E402
from distopt.data import load_splits  # noqa: E402
from distopt.results.trials import BREAKDOWN  # noqa: E402
from distopt.training import WorkerEnv, fit  # noqa: E402

BASE = ["model.channels=8", "model.blocks=2", "model.dense_units=32", "train.epochs=8",
        "train.lr=0.003", "train.schedule=cosine", "train.precision=fp32",
        "augment.rotation=10", "augment.shift=0.1", "compress.prune.ratio=0.8",
        "compress.finetune_epochs=2", "compress.quantize.bits=4"]
TEACHER = ["model.preset=seed_cnn", "train.epochs=6", "train.lr=0.002", "train.schedule=cosine",
           "train.precision=fp32", "augment.rotation=10", "augment.shift=0.1",
           "compress.prune.ratio=0", "compress.quantize.bits=32"]
SETUPS: dict[str, list[str]] = {
    "base": [],
    "+distill": ["train.distill_alpha=0.5", "train.distill_temperature=4.0"],
    "+mixed bits": ["compress.quantize.bits_first_conv=8", "compress.quantize.bits_classifier=8"],
    "16x16 input": ["data.resize=16"],
    "same blocks": ["model.block=same"],
    "separable blocks": ["model.block=separable"],
    "depthwise blocks": ["model.block=depthwise"],
    "no biases": ["model.bias=false"],
    "aug prob 0.5": ["augment.prob=0.5"],
    "3-bit": ["compress.quantize.bits=3"],
    "ternary": ["compress.quantize.bits=2"],
    "clusters 15": ["compress.cluster.k=15"],
    "clusters 7": ["compress.cluster.k=7"],
    "per-tensor scales": ["compress.quantize.scales=tensor"],
    "cosine fine-tune": ["compress.finetune_schedule=cosine"],
    "no pruning": ["compress.prune.ratio=0"],
    "no pruning, odd levels": ["compress.prune.ratio=0", "compress.quantize.odd_levels=true"],
}
HEADERS = ["setup", "seeds", "test acc mean", "test acc sd", "vs base (points)", "bytes mean",
           "header / index / scales+biases / values", "v1 bytes mean", "v2 saves", "flash mean"]
# Issue 23's building blocks against the base and the nearest older block kind, in one run:
#   python benchmarks/frontier_ablation.py --setups blocks --name frontier_blocks
BLOCKS = ["base", "separable blocks", "depthwise blocks", "no biases", "aug prob 0.5"]
# The codings and schedule issue 23 added next (odd levels have no zero, so they are measured
# against the unpruned base):
#   python benchmarks/frontier_ablation.py --setups codings --name frontier_codings
CODINGS = ["base", "per-tensor scales", "cosine fine-tune", "no pruning",
           "no pruning, odd levels"]


def v1_bytes(artifact: bytes, bits: int) -> int | None:
    """The same decoded weights in format v1, after checking that they decode identically;
    None where v1 cannot hold them (3-bit and ternary weights are new in v2, codebooks in
    v3)."""
    if artifact[4] == 3:
        return None
    d = decode(artifact)
    widths = {e["name"]: e["bits"] for e in d.tensors if e["name"] in d.codes}
    if {bits, *widths.values()} & {3, 2}:
        return None
    v1 = encode(d.model, bits, d.meta, weight_bits=widths, version=1)
    back = decode(v1).model.state_dict()
    assert all(torch.equal(t, back[k]) for k, t in d.model.state_dict().items())
    return len(v1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--setups", default="all",
                    help="all, blocks (issue 23's building blocks), codings (its codings), or "
                    "names joined by commas")
    ap.add_argument("--name", default="frontier_ablation", help="results/<name>.json")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    names = list(SETUPS) if args.setups == "all" else BLOCKS if args.setups == "blocks" else \
        CODINGS if args.setups == "codings" else args.setups.split(",")
    unknown = [n for n in names if n not in SETUPS]
    if unknown or "base" not in names:
        raise SystemExit(f"--setups: got {unknown or names}; names are {list(SETUPS)}, with base")
    setups = {n: SETUPS[n] for n in names}
    splits = load_splits(load_config(None).data)
    t0 = time.perf_counter()
    teacher = fit(load_config(None, TEACHER), WorkerEnv(), lambda *a, **k: None,
                  evaluate_test=True, splits=splits) if "+distill" in setups else None
    if teacher:
        print(f"teacher: test {teacher['metrics'][M.TEST_ACCURACY]:.4f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "teacher.dopt"
        if teacher:
            path.write_bytes(teacher["artifact"])
        for seed in range(args.seeds):  # seeds outermost: every setup sees the same load
            for setup, extra in setups.items():
                over = BASE + extra + [f"train.seed={seed}"]
                if "train.distill_alpha=0.5" in extra:
                    over.append(f"train.teacher_path={path}")
                cfg = load_config(None, over)
                out = fit(cfg, WorkerEnv(), lambda *a, **k: None, evaluate_test=True,
                          splits=splits)
                m = out["metrics"]
                runs.append({"setup": setup, "seed": seed, "test_accuracy": m[M.TEST_ACCURACY],
                             "val_accuracy": m[M.VAL_ACCURACY], "bytes": m[M.SIZE_BYTES],
                             "v1_bytes": v1_bytes(out["artifact"], cfg.compress.quantize.bits),
                             "flash_bytes": m[M.FLASH_BYTES],
                             **{k: m[k] for k in BREAKDOWN}})
                v1 = runs[-1]["v1_bytes"]
                print(f"{setup:>16} seed {seed}: test {m[M.TEST_ACCURACY]:.4f}, "
                      f"{m[M.SIZE_BYTES]:,} B (v1 {'-' if v1 is None else f'{v1:,}'} B)",
                      flush=True)
    base = statistics.mean(r["test_accuracy"] for r in runs if r["setup"] == "base")
    rows = []
    for setup in setups:
        rs = [r for r in runs if r["setup"] == setup]
        acc = [r["test_accuracy"] for r in rs]
        mean = statistics.mean(acc)
        size = statistics.mean(r["bytes"] for r in rs)
        v1s = [r["v1_bytes"] for r in rs if r["v1_bytes"] is not None]
        v1 = statistics.mean(v1s) if len(v1s) == len(rs) else None
        rows.append([setup, len(rs), f"{mean:.4f}",
                     f"{statistics.stdev(acc):.4f}" if len(acc) > 1 else "-",
                     f"{100 * (mean - base):+.2f}", f"{size:,.0f}",
                     " / ".join(f"{statistics.mean(r[k] for r in rs):,.0f}" for k in BREAKDOWN),
                     "- (v2/v3 only)" if v1 is None else f"{v1:,.0f}",
                     "-" if v1 is None else f"{1 - size / v1:.0%}",
                     f"{statistics.mean(r['flash_bytes'] for r in rs):,.0f}"])
    print(table(HEADERS, rows))
    path = write(args.name, {
        "command": "python benchmarks/frontier_ablation.py " + " ".join(sys.argv[1:]),
        "base": BASE, "teacher": TEACHER,
        "teacher_test_accuracy": teacher["metrics"][M.TEST_ACCURACY] if teacher else None,
        "setups": setups, "runs": runs, "table": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
