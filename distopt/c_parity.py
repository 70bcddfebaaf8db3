"""An exported C model checked on the real thing: compiled by this machine's C compiler with a
small harness, run on test inputs, and compared with the decoded PyTorch model (accuracies,
agreement, the largest logit difference), and its flash and RAM read back from the compiled
code (``sizeof`` of its arrays), which must be the ``flash_bytes`` and ``peak_ram_bytes``
distopt reports."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from distopt import metrics as M
from distopt.compress import Decoded
from distopt.export import compare, integer_reference, reference_logits

__all__ = ["MAX_INPUTS", "c_compiler", "c_parity"]

MAX_INPUTS = 2000  # test inputs the C program runs (a plain C loop: seconds, not minutes)

HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
void distopt_predict(const %(ctype)s *in, %(ctype)s *logits);
uint32_t distopt_flash_bytes(void);
uint32_t distopt_arena_bytes(void);
int main(void) {
    static %(ctype)s x[%(inputs)d];
    %(ctype)s y[%(classes)d];
    printf("%%u %%u\n", distopt_flash_bytes(), distopt_arena_bytes());
    fflush(stdout);
    while (fread(x, sizeof(%(ctype)s), %(inputs)d, stdin) == %(inputs)d) {
        distopt_predict(x, y);
        fwrite(y, sizeof(%(ctype)s), %(classes)d, stdout);
    }
    return 0;
}
"""


def c_compiler() -> str | None:
    """The C compiler to check exports with: ``$CC``, else cc, gcc or clang on the PATH."""
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _feeds(decoded: Decoded, x: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """(the C type of inputs and logits, the inputs the program reads, the reference logits)
    of raw inputs ``x``: float32 raw values and the decoded model's logits, or for an integer
    model the int8 inputs on its grid and the integer reference's int8 logits."""
    if decoded.integer is None:
        return "float", np.ascontiguousarray(x, np.float32), reference_logits(decoded, x)
    return "int8_t", *integer_reference(decoded, x)


def c_parity(decoded: Decoded, source: bytes, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Compile ``source`` (-std=c99 -O2, warnings as errors), run it on the first
    :data:`MAX_INPUTS` of ``(x, y)`` (raw stored values), and compare with the decoded
    PyTorch model on the same inputs: for an integer model, its integer reference, int8
    logits against int8 logits (``max_abs_logit_diff`` in int8 steps)."""
    cc = c_compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on the PATH")
    spec = decoded.model.spec
    x, y = np.asarray(x[:MAX_INPUTS], np.float32), y[:MAX_INPUTS]
    inputs = int(np.prod(spec.in_shape))
    ctype, feed, ref = _feeds(decoded, x)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "model.c").write_bytes(source)
        (d / "main.c").write_text(HARNESS % {"inputs": inputs, "classes": spec.num_classes,
                                                 "ctype": ctype})
        built = subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                                str(d / "run"), str(d / "model.c"), str(d / "main.c"), "-lm"],
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeError(f"the exported C does not compile:\n{built.stderr[-3000:]}")
        ran = subprocess.run([str(d / "run")], input=feed.tobytes(), capture_output=True,
                             check=True)
    head, _, rest = ran.stdout.partition(b"\n")
    flash, arena = (int(v) for v in head.split())
    logits = np.frombuffer(rest, feed.dtype).reshape(len(x), spec.num_classes)
    return {M.FLASH_BYTES: flash, "arena_bytes": arena,
            **compare(ref, logits.astype(np.float32), y, "c")}
