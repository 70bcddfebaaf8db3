"""An exported ``.tflite`` model checked on TensorFlow Lite Micro's own interpreter (the
``tflite-micro`` package): every test input through it at batch 1, its int8 logits compared
with the integer reference's, and the tensor arena it allocates read from its recording
allocator (``print_allocations``): the activations' part (the arena's head, which TFLM's
memory planner fills with the activation buffers) beside ``peak_ram_bytes``, and the whole
arena (with TFLM's own per-tensor and per-node structures)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from typing import Any

import numpy as np

from distopt.compress import Decoded
from distopt.export import compare, integer_reference
from distopt.tflite_source import require_tflite, to_nhwc

__all__ = ["MAX_INPUTS", "tflm_parity"]

MAX_INPUTS = 2000  # test inputs run through the interpreter, one at a time


def _captured(fn: Any) -> str:
    """What ``fn()`` writes to the process's stdout and stderr (file descriptors 1 and 2: the
    interpreter prints from C++)."""
    with tempfile.TemporaryFile() as f:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            fn()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        f.seek(0)
        return f.read().decode(errors="replace")


def tflm_parity(decoded: Decoded, data: bytes, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Run the first :data:`MAX_INPUTS` of ``(x, y)`` (raw stored values), quantized to the
    input's grid as the integer reference does, through TFLM and compare int8 logits."""
    require_tflite()
    from tflite_micro.python.tflite_micro import runtime

    x, y = x[:MAX_INPUTS], y[:MAX_INPUTS]
    q, ref = integer_reference(decoded, x)
    feed = to_nhwc(q)
    interp = runtime.Interpreter.from_bytes(data)
    got = np.zeros_like(ref)
    t0 = time.perf_counter()
    for i in range(len(feed)):
        interp.set_input(feed[i:i + 1], 0)
        interp.invoke()
        got[i] = interp.get_output(0)[0]
    per = (time.perf_counter() - t0) / max(len(feed), 1) * 1000
    text = _captured(interp.print_allocations)
    head = re.search(r"Arena allocation head (\d+) bytes", text)
    total = re.search(r"Arena allocation total (\d+) bytes", text)
    return {"tflm_arena_bytes": int(head.group(1)) if head else None,
            "tflm_arena_total_bytes": int(total.group(1)) if total else None,
            "tflm_ms": per, **compare(ref, got, y, "tflm")}
