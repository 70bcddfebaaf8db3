"""Deployed models in Python: ``distopt.load(path)`` gives a model that takes inputs as the
dataset stores them (raw pixels, token ids) and returns logits as a ``torch.Tensor``.

    import distopt, numpy as np
    model = distopt.load("results/mnist_cnn/models/3ab6996e.dopt")
    x = np.zeros((8, 1, 28, 28), np.uint8)        # a batch as MNIST stores it
    predictions = model(x).argmax(1)

For a ``.dopt`` file it is a ``torch.nn.Module``: the model decoded from the file (so it
computes exactly what every reported accuracy measured), in eval mode, with the input
normalization recorded in the file built in. For an ``.onnx`` file written by ``distopt
export`` it is an :class:`OnnxModel`, an ONNX Runtime session with the same call (the
normalization is part of that graph).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distopt.compress import ArtifactError, decode
from distopt.runtime import InputNorm

__all__ = ["DeployedModel", "OnnxModel", "load"]


class DeployedModel(nn.Module):
    """A decoded artifact with its input normalization in front of it."""

    def __init__(self, model: nn.Module, norm: InputNorm, meta: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.norm = norm
        self.meta = meta

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        check_input(x, self.norm, tuple(self.model.spec.in_shape))
        return self.model(self.norm(x))

    @property
    def contract(self) -> str:
        return input_contract(self.norm, tuple(self.model.spec.in_shape))


def input_contract(norm: InputNorm, in_shape: tuple[int, ...]) -> str:
    """What a deployed model takes, in words: the raw inputs its data stored."""
    if norm.tokens:
        return f"token ids, integers, of shape (N, {in_shape[0]})"
    shape = f"(N, {in_shape[0]}, H, W) (resized to {list(norm.size)} inside)" if norm.size \
        else "(N, " + ", ".join(map(str, in_shape)) + ")"
    if norm.scale != 1:
        return (f"raw values as the data stores them, shape {shape}: integers in [0, "
                f"{1 / norm.scale:.6g}] (e.g. uint8 pixels; the model scales them by "
                f"{norm.scale:.6g} itself)")
    return f"raw values as the data stores them, shape {shape}"


def check_input(x: torch.Tensor, norm: InputNorm, in_shape: tuple[int, ...]) -> None:
    """Refuse inputs that break the model's input contract (:func:`input_contract`) instead
    of returning confident nonsense: floats in [0, 1] given to a model of uint8 pixels once
    gave 10% accuracy without a word."""
    def refuse(what: str) -> None:
        raise ValueError(f"this model takes {input_contract(norm, in_shape)}; got {what}")

    resized = bool(norm.size) and not norm.tokens  # any height and width: resized inside
    if x.dim() != len(in_shape) + 1 or x.shape[1] != in_shape[0] or \
            (not resized and tuple(x.shape[1:]) != in_shape):
        refuse(f"shape {tuple(x.shape)}")
    if norm.tokens:
        if x.is_floating_point() and bool((x != x.round()).any()):
            refuse(f"{x.dtype} values that are not integers")
        return
    if norm.scale != 1 and x.numel():
        top = 1 / norm.scale
        lo, hi = float(x.min()), float(x.max())
        fractional = x.is_floating_point() and bool((x != x.round()).any())
        if fractional or lo < 0 or hi > top * (1 + 1e-6):
            refuse(f"{x.dtype} values in [{lo:.4g}, {hi:.4g}]" +
                   (" with fractions (normalized already? pass the raw values, e.g. "
                    f"x * {top:.6g})" if fractional else ""))


class OnnxModel:
    """An exported ONNX model on ONNX Runtime (CPU), called like :class:`DeployedModel`:
    ``model(raw_batch)`` -> logits (``torch.Tensor``). ``meta`` is the artifact's meta;
    ``session`` is the ``onnxruntime.InferenceSession`` itself."""

    def __init__(self, data: bytes, threads: int | None = None) -> None:
        from distopt.export import INPUT_NAME, META_KEY, session

        self.session = session(data, threads)
        self.input_name = INPUT_NAME
        self.input_dtype = np.int64 if self.session.get_inputs()[0].type == "tensor(int64)" \
            else np.float32
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta: dict[str, Any] = json.loads(props.get(META_KEY, "{}"))

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        batch = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, self.input_dtype)
        return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])

    def eval(self) -> OnnxModel:  # the same call as an nn.Module's, for code written for both
        return self


def load(path: str | Path, threads: int | None = None, trust_code: bool = False
         ) -> DeployedModel | OnnxModel:
    """The model in a ``.dopt`` or ``.onnx`` file, ready to call on raw inputs (eval mode,
    CPU, float32 logits). ``threads`` caps ONNX Runtime's intra-op threads (``.onnx`` only).
    ``trust_code``: a ``.dopt`` file of your own model family (``model.family:
    "package.module:Factory"``) is rebuilt by importing and calling that factory, which is
    refused unless you trust the file's source.

    Raises :class:`~distopt.compress.ArtifactError` for a file that is not a valid artifact
    (or one without its input normalization), and ImportError naming the ``distopt[onnx]``
    extra for an ``.onnx`` file without ONNX Runtime installed."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".onnx":
        try:
            return OnnxModel(data, threads)
        except ImportError:
            raise
        except Exception as e:  # onnxruntime's own errors: Fail, InvalidGraph, ...
            raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({e})") from None
    decoded = decode(data, str(path), trust_code)
    norm = decoded.meta.get("input") if isinstance(decoded.meta, dict) else None
    if not isinstance(norm, dict):
        raise ArtifactError(f"{path}: the artifact records no input normalization, so raw "
                            "inputs cannot be mapped to what the model was trained on")
    return DeployedModel(decoded.reference, InputNorm.from_meta(norm), decoded.meta).eval()
