"""GPU benchmark in one call, within 5 minutes on one modern GPU (`bash benchmarks/gpu.sh`).

Runs on a bare machine with PyTorch alone; parts that need more say why they skip. It finds the
package (this checkout) and the data itself (full MNIST from --mnist-dir, DISTOPT_MNIST_DIR or
../shared/data/mnist; else the embedded subset), and writes its JSON after every part, so a
run cut short keeps what it measured.

1. step: one training step (forward, backward, Adam) of the seed CNN, timed with CUDA events
   over interleaved repeats: fp32 / TF32 / bf16 / fp16 (+ loss scaling) at batches 512, 4,096
   and 16,384, channels-last on and off. Needs torch only (the model is built inline).
2. fit: `distopt.training.fit` of the seed CNN (2 epochs, batch 4,096, no pruning) with the
   training arrays on the device (indexed by a device-side permutation) vs copied from host
   memory every step. Needs the package's dependencies (numpy, pyarrow, pyyaml, filelock).
3. artifact: accuracy of the same decoded artifact evaluated on the GPU (fp32, TF32) and on
   the CPU (fp32, what every reported accuracy uses), and the number of predictions that differ.

Without CUDA it says so, skips everything and still writes the JSON (a test runs it that way).

    bash benchmarks/gpu.sh [--out DIR] [--mnist-dir PATH] [--budget-s 280]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's distopt, installed or not

BATCHES = (512, 4096, 16384)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.cuda.is_available(),
                            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    capability=list(torch.cuda.get_device_capability(0)),
                    cuda_version=torch.version.cuda)
    return info


class Report:
    """The JSON file, rewritten after every part."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "gpu.json"
        self.data: dict[str, Any] = {"machine": machine()}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2, default=float) + "\n")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:,.3f}" if isinstance(v, float) and abs(v) < 10 else \
            f"{v:,.0f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def seed_cnn() -> nn.Module:
    """The seed CNN (Conv32-Conv64-Dense128, 225,034 parameters), built without distopt."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25),
                         nn.Linear(1600, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10))


def part_step(reps: int, deadline: float) -> list[dict[str, Any]]:
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    bf16 = torch.cuda.get_device_capability(0) >= (8, 0)
    rows = []
    for batch in BATCHES:
        for channels_last in (False, True):
            if time.perf_counter() > deadline:
                return rows
            torch.manual_seed(0)
            model = seed_cnn().to(dev)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters())
            x = torch.randn(batch, 1, 28, 28, device=dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,), device=dev)
            modes = [m for m in PRECISIONS if m != "bf16" or bf16]
            scaler = torch.amp.GradScaler("cuda")

            def step(mode: str) -> float:
                tf32 = mode == "tf32"
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
                start, end = torch.cuda.Event(enable_timing=True), \
                    torch.cuda.Event(enable_timing=True)
                start.record()
                with torch.autocast("cuda", dtype=dtype or torch.float32,
                                    enabled=dtype is not None):
                    loss = nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                if mode == "fp16":
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                end.record()
                end.synchronize()
                return start.elapsed_time(end)  # ms

            times: dict[str, list[float]] = {m: [] for m in modes}
            for i in range(reps + 3):  # interleaved: drift hits every precision alike
                for m in modes:
                    ms = step(m)
                    if i >= 3:
                        times[m].append(ms)
            med = {m: statistics.median(v) for m, v in times.items()}
            for m in modes:
                rows.append({"batch": batch, "channels_last": channels_last, "precision": m,
                             "step_ms": med[m], "samples_per_s": batch / med[m] * 1e3,
                             "vs_fp32": med["fp32"] / med[m]})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def find_mnist(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("DISTOPT_MNIST_DIR"), ROOT.parent / "shared/data/mnist",
                 ROOT / "shared/data/mnist"):
        if cand and (Path(cand) / "train-images-idx3-ubyte.gz").exists():
            return str(cand)
    return None


def part_fit(mnist: str | None) -> tuple[list[dict[str, Any]], bytes | None, Any]:
    from distopt import metrics as M
    from distopt.training import run as training_run
    from distopt.training import WorkerEnv, fit
    from distopt.config import load_config
    from distopt.data import load_splits

    data = ["data.name=mnist", f"data.path={mnist}"] if mnist else []
    cfg = load_config(ROOT / "configs" / "mnist_cnn.yaml", data + [
        "train.epochs=2", "train.batch_size=4096", "train.lr=0.008", "train.warmup_steps=20",
        "compress.prune.ratio=0", "compress.quantize.bits=8", "train.use_gpu=true"])
    splits = load_splits(cfg.data)
    env = WorkerEnv(device=torch.device("cuda"))
    rows, artifact = [], None
    default_max = training_run.DEVICE_DATA_MAX_BYTES
    for label, limit in (("on the device", default_max), ("copied per step", 0)):
        training_run.DEVICE_DATA_MAX_BYTES = limit
        history: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        out = fit(cfg, env, lambda m, s, f=None: history.append(m), splits=splits)
        rows.append({"data": label, "wall_s": time.perf_counter() - t0,
                     "samples_per_s_last_epoch": history[-2][M.SAMPLES_PER_S],
                     "precision": out["metrics"][M.PRECISION],
                     "val_accuracy": out["metrics"][M.VAL_ACCURACY]})
        artifact = out["artifact"]
    training_run.DEVICE_DATA_MAX_BYTES = default_max
    return rows, artifact, splits


def part_artifact(artifact: bytes, splits: Any) -> list[dict[str, Any]]:
    from distopt.compress import decode
    from distopt.runtime import InputNorm

    dec = decode(artifact)
    norm = InputNorm.from_meta(dec.meta["input"])
    x, y = torch.from_numpy(splits.x_test), torch.from_numpy(splits.y_test)

    def predict(device: str, tf32: bool) -> torch.Tensor:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        model = dec.model.to(device).eval()
        with torch.no_grad():
            return torch.cat([model(norm(x[i:i + 2048].to(device))).argmax(1).cpu()
                              for i in range(0, len(x), 2048)])

    cpu = predict("cpu", False)
    rows = [{"where": "CPU fp32 (reported)", "accuracy": float((cpu == y).float().mean()),
             "differs_from_cpu": 0}]
    for label, tf32 in (("GPU fp32", False), ("GPU TF32", True)):
        p = predict("cuda", tf32)
        rows.append({"where": label, "accuracy": float((p == y).float().mean()),
                     "differs_from_cpu": int((p != cpu).sum())})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def guarded(name: str, report: Report, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ImportError as e:
        reason = f"skipped: {e} (install the package's dependencies: pip install -e .)"
    except Exception as e:  # noqa: BLE001 - a benchmark part reports its failure and goes on
        reason = f"failed: {e.__class__.__name__}: {e}"
    print(f"{name}: {reason}")
    report.put(name, {"skipped": reason})
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--mnist-dir", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=280.0,
                    help="stop starting step timings after this (the whole run stays < 5 min)")
    args = ap.parse_args()
    report = Report(Path(args.out))
    if not torch.cuda.is_available():
        reason = ("no CUDA device (torch.cuda.is_available() is False): skipping the step "
                  "timings, the fit with data on the device and the GPU-vs-CPU artifact check")
        print(reason)
        report.put("skipped", reason)
        print(f"wrote {report.path}")
        return
    t0 = time.perf_counter()
    print(f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch "
          f"{torch.__version__}\n")
    steps = part_step(args.reps, t0 + args.budget_s * 0.45)
    report.put("step", steps)
    print(table(["batch", "channels-last", "precision", "ms/step", "samples/s", "vs fp32"],
                [[r["batch"], r["channels_last"], r["precision"], r["step_ms"],
                  r["samples_per_s"], f"{r['vs_fp32']:.2f}x"] for r in steps]), "\n")
    mnist = find_mnist(args.mnist_dir)
    fitted = guarded("fit", report, lambda: part_fit(mnist))
    if fitted:
        rows, artifact, splits = fitted
        report.put("fit", {"data": "mnist" if mnist else "mnist-mini", "runs": rows})
        print(table(["training arrays", "wall s", "samples/s (last epoch)", "precision",
                     "val acc"], [[r["data"], r["wall_s"], r["samples_per_s_last_epoch"],
                                   r["precision"], r["val_accuracy"]] for r in rows]), "\n")
        checks = guarded("artifact", report, lambda: part_artifact(artifact, splits))
        if checks:
            report.put("artifact", checks)
            print(table(["decoded artifact on", "test accuracy", "predictions differing "
                         "from CPU"], [[r["where"], r["accuracy"], r["differs_from_cpu"]]
                                       for r in checks]), "\n")
    total = time.perf_counter() - t0
    report.put("total_s", total)
    print(f"total {total:.0f} s; wrote {report.path}")


if __name__ == "__main__":
    main()
