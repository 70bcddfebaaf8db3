"""GPU benchmark, one command, under 8 minutes on a single-GPU machine (`bash benchmarks/gpu.sh`).

1. Training step of the seed CNN (batch 512) and the seed RNN shape with a GRU (batch 256):
   fp32 vs bf16 autocast vs fp16 autocast with loss scaling, timed interleaved with CUDA syncs.
2. Ray Train samples/s of the seed CNN with 1 GPU worker vs one worker per available GPU
   (the same run twice on a 1-GPU machine is not repeated).
3. A small search (configs/smoke.yaml, 4 trials, 1 GPU per trial): wall time.

On a machine without CUDA it says so, skips all three and still writes the JSON (a test runs
it that way), so the script can be tried anywhere before a GPU is rented.

    bash benchmarks/gpu.sh [--out DIR] [--data mnist --mnist-dir PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.config import load_config  # noqa: E402
from distopt.models import build_model, seed_cnn, seed_rnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def step_times(reps: int = 20) -> list[dict[str, Any]]:
    dev = torch.device("cuda")
    rows = []
    for label, spec, batch in (("seed CNN", seed_cnn(0.25), 512),
                               ("seed RNN shape, GRU, MNIST rows",
                                dataclasses.replace(seed_rnn(False), cell="gru"), 256)):
        torch.manual_seed(0)
        model = build_model(spec).to(dev)
        opt = torch.optim.Adam(model.parameters())
        x = torch.randn(batch, 1, 28, 28, device=dev)
        y = torch.randint(0, 10, (batch,), device=dev)
        modes = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        scalers = {m: torch.amp.GradScaler("cuda", enabled=m == "fp16") for m in modes}
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

        def step(mode: str) -> float:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=dtypes[mode], enabled=mode != "fp32"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scalers[mode].scale(loss).backward()
            scalers[mode].step(opt)
            scalers[mode].update()
            torch.cuda.synchronize()
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(reps + 5):
            for m in modes:
                dt = step(m)
                if i >= 5:
                    times[m].append(dt)
        ms = {m: statistics.median(v) * 1e3 for m, v in times.items()}
        for m in modes:
            rows.append({"model": label, "batch": batch, "precision": m, "step_ms": ms[m],
                         "samples_per_s": batch / ms[m] * 1e3, "vs_fp32": ms["fp32"] / ms[m]})
    return rows


def ray_train_scaling(data: list[str], epochs: int) -> list[dict[str, Any]]:
    from distopt.run import ensure_ray, run_trial

    ensure_ray(include_dashboard=False)
    n = torch.cuda.device_count()
    storage = Path(tempfile.mkdtemp(prefix="distopt-gpu-"))
    rows = []
    for workers in sorted({1, n}):
        cfg = load_config(ROOT / "configs" / "mnist_cnn.yaml", data + [
            f"train.epochs={epochs}", "compress.prune_ratio=0", "train.use_gpu=true",
            f"train.num_workers={workers}", "train.cpus_per_worker=1", "train.batch_size=512"])
        res = run_trial(cfg, storage, name=f"gpu{workers}", evaluate_test=False)
        rates = [h[M.SAMPLES_PER_S] for h in res.history[1:]] or \
            [res.history[0][M.SAMPLES_PER_S]]
        rows.append({"workers": workers, "gpus": workers, "precision": res.metrics[M.PRECISION],
                     "samples_per_s": statistics.median(rates),
                     "val_accuracy": res.metrics[M.VAL_ACCURACY]})
    for r in rows:
        r["vs_1_gpu"] = r["samples_per_s"] / rows[0]["samples_per_s"]
    return rows


def small_search(out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), "--config",
                        str(ROOT / "configs" / "smoke.yaml"), "--output", str(out),
                        "--overwrite", "train.use_gpu=true"],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    return {"returncode": p.returncode, "wall_s": wall, "trials": 4,
            "tail": (p.stdout + p.stderr)[-800:] if p.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=None, help="directory for gpu.json")
    ap.add_argument("--data", default="mnist-mini", choices=["mnist-mini", "mnist"])
    ap.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(args.out) if args.out else Path(__file__).parent / "results"
    if not torch.cuda.is_available():
        reason = ("no CUDA device (torch.cuda.is_available() is False): skipping the GPU step "
                  "timings, the multi-GPU Ray Train run and the GPU search")
        print(reason)
        print(f"wrote {write('gpu', {'skipped': reason}, out_dir)}")
        return
    data = [f"data.name={args.data}"] + ([f"data.path={args.mnist_dir}"]
                                         if args.data == "mnist" else [])
    gpu = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    steps = step_times()
    print(f"{gpu} x {torch.cuda.device_count()}\n")
    print(table(["model", "batch", "precision", "ms/step", "samples/s", "vs fp32"],
                [[r["model"], r["batch"], r["precision"], r["step_ms"], r["samples_per_s"],
                  f"{r['vs_fp32']:.2f}x"] for r in steps]))
    scaling = ray_train_scaling(data, args.epochs)
    print()
    print(table(["Ray Train workers (1 GPU each)", "precision", "samples/s", "vs 1 GPU",
                 "val acc"], [[r["workers"], r["precision"], r["samples_per_s"],
                               f"{r['vs_1_gpu']:.2f}x", r["val_accuracy"]] for r in scaling]))
    search = small_search(Path(tempfile.mkdtemp(prefix="distopt-gpu-search-")) / "smoke")
    print()
    print(table(["search", "trials", "wall s", "exit"],
                [["configs/smoke.yaml on GPU", search["trials"], search["wall_s"],
                  search["returncode"]]]))
    total = time.perf_counter() - t0
    path = write("gpu", {"gpu": gpu, "gpu_count": torch.cuda.device_count(), "step": steps,
                         "ray_train": scaling, "search": search, "total_s": total,
                         "seeds": {"torch.manual_seed": 0, "train.seed": 0}}, out_dir)
    print(f"\ntotal {total:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
