"""Training throughput: the plain single-process loop versus Ray Train, fp32 versus bf16.

Same model (seed CNN), data, batch size and loop code (:func:`distopt.training.fit`) in
every setup; only the launcher differs. Samples/s are steady state: epochs after the first,
training steps only. Start-up (``fit()`` call to the first line of the loop) and teardown are
reported apart. Also: augmentation cost per step, peak memory of a 1-worker trial, and the
recurrent models' training step in fp32 versus bf16 (each cell, sequential MNIST and tokens).

    python benchmarks/throughput.py            # embedded data, about 5 minutes on 2 cores
    python benchmarks/throughput.py --only rnn # just the recurrent step timings, ~1 minute
    python benchmarks/throughput.py --epochs 4 --data mnist --mnist-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.augment import random_affine  # noqa: E402
from distopt.config import Config, load_config  # noqa: E402
from distopt.models import build_model, seed_cnn, seed_rnn  # noqa: E402
from distopt.orchestration.run import ensure_ray, fit_local, run_trial  # noqa: E402
from distopt.training.precision import cpu_bf16_supported  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def steady(history: list[dict[str, Any]]) -> float:
    rates = [h[M.SAMPLES_PER_S] for h in history[1:]] or [history[0][M.SAMPLES_PER_S]]
    return statistics.median(rates)


def augmentation_cost(batch: int = 128, reps: int = 30) -> dict[str, float]:
    """Milliseconds of one batched random affine vs one bf16 (or fp32) training step."""
    precision = "bf16" if cpu_bf16_supported() else "fp32"
    model = build_model(seed_cnn(0.25)).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters())
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    cfg = load_config(ROOT / "configs" / "mnist_cnn.yaml").augment
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x.contiguous(memory_format=torch.channels_last))
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timeit(fn: Any) -> float:
        for _ in range(5):
            fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3

    # Interleaved a few times: the machine is shared and noisy.
    aug, stp = [], []
    for _ in range(3):
        aug.append(timeit(lambda: random_affine(x, cfg, g)))
        stp.append(timeit(step))
    a, s = statistics.median(aug), statistics.median(stp)
    return {"augment_ms": a, "step_ms": s, "ratio": a / s, "precision": precision,
            "batch": batch}


def rnn_step_times(batch: int = 128, reps: int = 10) -> list[dict[str, Any]]:
    """Training step (forward, backward, Adam) of the seed RNN shape per cell, fp32 vs bf16
    autocast, timed interleaved (fp32, bf16, fp32, bf16, ...) so that both see the same load."""
    import dataclasses

    out = []
    for tokens in (False, True):
        for cell in ("rnn", "gru", "lstm"):
            torch.manual_seed(0)
            spec = dataclasses.replace(seed_rnn(tokens), cell=cell)
            model = build_model(spec)
            opt = torch.optim.Adam(model.parameters())
            x = (torch.randint(1, 5000, (batch, *spec.in_shape)) if tokens else
                 torch.randn(batch, *spec.in_shape))
            y = torch.randint(0, 10, (batch,))

            def step(bf16: bool) -> float:
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                return time.perf_counter() - t0

            times: dict[bool, list[float]] = {False: [], True: []}
            for i in range(reps + 2):
                for bf16 in (False, True):
                    dt = step(bf16)
                    if i >= 2:  # warm-up
                        times[bf16].append(dt)
            fp32_ms = statistics.median(times[False]) * 1e3
            bf16_ms = statistics.median(times[True]) * 1e3
            out.append({"input": "tokens (5000 x 128 embedding, 64 steps)" if tokens
                        else "MNIST rows (28 steps x 28)", "cell": cell, "batch": batch,
                        "fp32_ms": fp32_ms, "bf16_ms": bf16_ms, "bf16_speedup": fp32_ms / bf16_ms,
                        "fp32_samples_per_s": batch / fp32_ms * 1e3,
                        "bf16_samples_per_s": batch / bf16_ms * 1e3})
    return out


def print_rnn(rnn: list[dict[str, Any]]) -> None:
    print(table(["input", "cell", "fp32 ms/step", "bf16 ms/step", "fp32 samples/s",
                 "bf16 samples/s", "bf16 speed-up"],
                [[r["input"], r["cell"], r["fp32_ms"], r["bf16_ms"], r["fp32_samples_per_s"],
                  r["bf16_samples_per_s"], f"{r['bf16_speedup']:.2f}x"] for r in rnn]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--data", default="mnist-mini", choices=["mnist-mini", "mnist"])
    ap.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--out", default=None, help="directory for throughput.json")
    ap.add_argument("--only", choices=["rnn"], default=None,
                    help="rnn: only the recurrent step timings (writes throughput_rnn.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(args.out) if args.out else Path(__file__).parent / "results"
    if args.only == "rnn":
        rnn = rnn_step_times()
        print_rnn(rnn)
        print(f"\nwrote {write('throughput_rnn', {'rnn_step': rnn}, out_dir)}")
        return

    overrides = [f"train.epochs={args.epochs}", "compress.prune.ratio=0", "compress.quantize.bits=32",
                 "augment.rotation=0", "augment.shift=0", "augment.shear=0", "augment.zoom=0",
                 f"data.name={args.data}"]
    if args.data == "mnist":
        overrides.append(f"data.path={args.mnist_dir}")
    base = load_config(ROOT / "configs" / "mnist_cnn.yaml", overrides)
    precisions = [p for p in args.precisions.split(",") if p != "bf16" or cpu_bf16_supported()]

    t0 = time.perf_counter()
    ensure_ray(include_dashboard=False)
    ray_init_s = time.perf_counter() - t0

    setups = [("plain loop (1 process)", None), ("Ray Train 1 worker x 2 CPU", (1, 2.0)),
              ("Ray Train 2 workers x 1 CPU", (2, 1.0))]
    rows, results = [], []
    storage = Path(tempfile.mkdtemp(prefix="distopt-bench-"))
    for precision in precisions:
        plain_rate = None
        for label, shape in setups:
            cfg: Config = base.with_overrides({"train.precision": precision})
            t_call = time.time()
            if shape is None:
                res = fit_local(cfg, evaluate_test=False)
            else:
                cfg = cfg.with_overrides({"train.num_workers": shape[0],
                                          "train.cpus_per_worker": shape[1]})
                res = run_trial(cfg, storage, name=f"{precision}-{shape[0]}w",
                                evaluate_test=False)
            t_end = time.time()
            rate = steady(res.history)
            plain_rate = plain_rate or rate
            startup = res.metrics["started_at"] - t_call
            teardown = t_end - res.metrics["started_at"] - res.metrics["train_seconds"]
            r = {"setup": label, "precision": res.metrics[M.PRECISION], "samples_per_s": rate,
                 "vs_plain": rate / plain_rate, "startup_s": startup, "teardown_s": teardown,
                 "worker_peak_rss_mb": res.metrics["worker_peak_rss_mb"],
                 "epoch_rates": [h[M.SAMPLES_PER_S] for h in res.history]}
            results.append(r)
            rows.append([label, r["precision"], rate, f"{r['vs_plain']:.2f}x", startup,
                         teardown, r["worker_peak_rss_mb"]])
            print(table(["setup", "precision", "samples/s", "vs plain", "start-up s",
                         "teardown s", "worker peak RSS MB"], rows[-1:]).splitlines()[-1],
                  flush=True)

    aug = augmentation_cost()
    rnn = rnn_step_times()
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    one_worker = [r for r in results if r["setup"].startswith("Ray Train 1")]
    memory = {"driver_peak_rss_mb": driver_peak,
              "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in one_worker),
              "note": "driver includes ray.init and the in-process plain-loop runs"}
    memory["driver_plus_worker_mb"] = memory["driver_peak_rss_mb"] + memory["worker_peak_rss_mb"]

    print()
    print(f"seed CNN, batch {base.train.batch_size}, {args.data}, {args.epochs} epochs, steady "
          f"state = median of epochs 2..{args.epochs}; ray.init {ray_init_s:.1f} s")
    print(table(["setup", "precision", "samples/s", "vs plain", "start-up s", "teardown s",
                 "worker peak RSS MB"], rows))
    print()
    print(table(["augment ms / batch 128", "train step ms", "augment / step"],
                [[aug["augment_ms"], aug["step_ms"], f"{100 * aug['ratio']:.1f}%"]]))
    print()
    print(table(["driver peak RSS MB", "1-worker peak RSS MB", "driver + worker MB"],
                [[memory["driver_peak_rss_mb"], memory["worker_peak_rss_mb"],
                  memory["driver_plus_worker_mb"]]]))
    print()
    print_rnn(rnn)
    out = write("throughput", {"config": base.to_dict(), "ray_init_s": ray_init_s,
                               "results": results, "augmentation": aug, "memory": memory,
                               "rnn_step": rnn, "seeds": {"train.seed": base.train.seed}},
                out_dir)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
