"""The precision a run trains in (fp32, bf16, or fp16 with loss scaling), chosen once per run
from the device and, on CPUs, from a measured step time; and CUDA's numeric switches."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

__all__ = ["DTYPES", "configure_cuda", "cpu_bf16_supported", "cuda_precision",
           "resolve_precision", "sync"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _time_steps(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None, n: int = 6
                ) -> float:
    """Median seconds of a forward+backward step (no optimizer) after warm-up."""
    times = []
    for i in range(n + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return float(np.median(times))


def cuda_precision(requested: str, capability: tuple[int, int], name: str, recurrent: bool
                   ) -> tuple[str, str]:
    """The precision that really runs on a CUDA device, and why.

    bf16 needs compute capability 8.0 (Ampere): below it cuDNN has no bf16 convolutions and
    ``torch.cuda.is_bf16_supported()`` still says yes (it counts emulation). cuDNN's recurrent
    kernels under autocast do not run in bf16 either, so recurrent models train in fp16 with
    loss scaling there. The reported precision is always what ran."""
    cc = f"{name} (compute capability {capability[0]}.{capability[1]})"
    if requested in ("fp32", "fp16"):
        return requested, "set in the config"
    if recurrent:
        return "fp16", (f"{'bf16 requested, but ' if requested == 'bf16' else ''}cuDNN runs "
                        "recurrent layers in fp16 under autocast: fp16 with loss scaling")
    if capability >= (8, 0):
        return "bf16", ("set in the config" if requested == "bf16" else
                        f"{cc} has native bf16")
    return "fp16", (f"{'bf16 requested, but ' if requested == 'bf16' else ''}{cc} has no native "
                    "bf16 (needs 8.0): fp16 with loss scaling")


def resolve_precision(requested: str, device: torch.device, model: nn.Module,
                      sample: torch.Tensor) -> tuple[str, str]:
    """Pick the training precision for ``auto`` (and correct an impossible one on CUDA) and
    say why: (precision, reason)."""
    if device.type == "cuda":
        recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
        return cuda_precision(requested, torch.cuda.get_device_capability(device),
                              torch.cuda.get_device_name(device), recurrent)
    if requested != "auto":
        return requested, "set in the config"
    if not cpu_bf16_supported():
        return "fp32", "this CPU has no native bf16 support"
    probe = copy.deepcopy(model)
    fp32_s = _time_steps(probe, sample, None)
    bf16_s = _time_steps(probe, sample, torch.bfloat16)
    if bf16_s < 0.9 * fp32_s:
        return "bf16", f"bf16 step {bf16_s * 1e3:.1f} ms vs fp32 {fp32_s * 1e3:.1f} ms"
    return "fp32", f"bf16 not faster here ({bf16_s * 1e3:.1f} ms vs fp32 {fp32_s * 1e3:.1f} ms)"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------



def configure_cuda(device: torch.device, tf32: bool) -> None:
    """Set TF32 explicitly (PyTorch's defaults differ between matmuls and cuDNN convolutions)
    and let cuDNN pick the fastest kernels for the fixed batch shapes."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

