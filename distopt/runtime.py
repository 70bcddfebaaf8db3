"""What running a deployed model needs, below both training and export: the input
normalization stored in every artifact (:class:`InputNorm`), batch-1 latency on PyTorch, and
ONNX Runtime sessions (the optional ``onnx`` extra, imported only when used).

Nothing here trains, exports or imports Ray."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distopt.models import ModelSpec, example_input

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["EXTRA_HINT", "INPUT_NAME", "META_KEY", "OUTPUT_NAME", "InputNorm", "example_feed",
           "measure_latency_ms", "measure_ort_latency_ms", "require_onnx", "session"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
META_KEY = "distopt"  # metadata_props key holding the artifact's meta (input norm, ...) as JSON
# On the package index "distopt" is an unrelated project: name the packages themselves.
EXTRA_HINT = "pip install onnx onnxruntime (the onnx extra: pip install -e '.[onnx]' in a checkout)"


@dataclass(frozen=True)
class InputNorm:
    """Maps stored pixels to network inputs: ``(x * scale - mean) / std``, resized to ``size``
    (``data.resize``) before standardizing; token ids pass through as integers; tabular rows
    are standardized per column (``column_mean``, ``column_std``: bucket id columns have 0 and
    1, so ids pass through exactly). Stored in the artifact so that a deployed model
    preprocesses exactly as in training."""

    scale: float
    mean: float
    std: float
    tokens: bool = False
    size: tuple[int, int] | None = None
    column_mean: tuple[float, ...] = ()
    column_std: tuple[float, ...] = ()

    @property
    def tabular(self) -> bool:
        return bool(self.column_mean)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return x.long()
        if self.tabular:
            mean = torch.tensor(self.column_mean, dtype=torch.float32, device=x.device)
            std = torch.tensor(self.column_std, dtype=torch.float32, device=x.device)
            return (x.float() - mean) / std
        return self.standardize(self.to_unit(x))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Stored pixels to [0, 1] (0 = black background): where augmentation happens, so that
        the zeros a transform pads with are background, not mean grey."""
        x = x.float() * self.scale
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            # Bilinear, half-pixel centers, no antialiasing: what ONNX Resize (linear,
            # half_pixel) computes, so the exported graph resizes as training did.
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=False)
        return x

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def shape_after(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one input after this norm (its resize), from the stored shape."""
        return (in_shape[0], *self.size) if self.size and not self.tokens else tuple(in_shape)

    def to_meta(self) -> dict[str, Any]:
        meta = {"scale": self.scale, "mean": self.mean, "std": self.std, "tokens": self.tokens}
        if self.tabular:
            meta.update(column_mean=list(self.column_mean), column_std=list(self.column_std))
        return {**meta, "size": list(self.size)} if self.size else meta

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> InputNorm:
        size = d.get("size")
        return cls(d["scale"], d["mean"], d["std"], bool(d.get("tokens", False)),
                   (int(size[0]), int(size[1])) if size else None,
                   tuple(float(v) for v in d.get("column_mean", ())),
                   tuple(float(v) for v in d.get("column_std", ())))



def measure_latency_ms(model: nn.Module, spec: ModelSpec, runs: int = 50) -> float:
    """Median batch-1 CPU latency of ``model`` in fp32, after warm-up, on one thread."""
    model = model.eval().cpu()
    x = example_input(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(10):
                model(x)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1e3)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def require_onnx(runtime: bool = False) -> None:
    """Raise ImportError naming the extra to install when ``onnx`` (and, with ``runtime``,
    ``onnxruntime``) is missing."""
    for module, needed in (("onnx", True), ("onnxruntime", runtime)):
        try:
            if needed:
                __import__(module)
        except ImportError:
            raise ImportError(f"the {module} package is not installed: {EXTRA_HINT}") from None


def session(onnx_bytes: bytes, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session with the default (full) graph optimizations; ``threads``
    caps its intra-op threads (1 for latency measurements)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"ONNX Runtime is needed: {EXTRA_HINT}") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: the console stays distopt's
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def measure_ort_latency_ms(onnx_bytes: bytes, example: np.ndarray, runs: int = 50) -> float:
    """Median batch-1 latency on ONNX Runtime, one thread, after 10 warm-up runs: what
    :func:`measure_latency_ms` measures for PyTorch."""
    sess = session(onnx_bytes, threads=1)
    feed = {INPUT_NAME: example}
    for _ in range(10):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def example_feed(spec: ModelSpec, batch: int = 1) -> np.ndarray:
    """A zero input batch as the exported graph takes it (float32 values or int64 ids)."""
    return np.zeros((batch, *spec.in_shape), np.int64 if spec.tokens else np.float32)
