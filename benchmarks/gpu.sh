#!/usr/bin/env bash
# GPU benchmark in one call (under 8 minutes on one GPU): step time fp32 / bf16 / fp16 with
# loss scaling, Ray Train samples/s on 1 vs all GPUs, a small search. Prints tables and writes
# benchmarks/results/gpu.json (or --out DIR). Without CUDA it says so and skips the GPU parts.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu.py "$@"
