#!/usr/bin/env bash
# GPU benchmark in one call (within 5 minutes on one GPU, PyTorch alone is enough for part 1):
# step time fp32 / TF32 / bf16 / fp16 at batches 512 / 4,096 / 16,384, channels-last on and off
# (CUDA events); a fit with data on the device vs copied per step; the decoded artifact on GPU vs
# CPU. Writes benchmarks/results/gpu.json (or --out DIR) after every part. Without CUDA it says
# so and skips the GPU parts.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu.py "$@"
