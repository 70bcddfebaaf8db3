"""Deployed models in Python: ``distopt.load(path)`` gives a ``torch.nn.Module`` that takes
inputs as the dataset stores them (raw pixels, token ids) and returns logits.

    import distopt, numpy as np
    model = distopt.load("results/mnist_cnn/models/3ab6996e.dopt")
    x = np.zeros((8, 1, 28, 28), np.uint8)        # a batch as MNIST stores it
    predictions = model(x).argmax(1)

The module is the model decoded from the file (so it computes exactly what every reported
accuracy measured), in eval mode, with the input normalization recorded in the file built in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distopt.compress import ArtifactError, decode
from distopt.train_loop import InputNorm

__all__ = ["DeployedModel", "load"]


class DeployedModel(nn.Module):
    """A decoded artifact with its input normalization in front of it."""

    def __init__(self, model: nn.Module, norm: InputNorm, meta: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.norm = norm
        self.meta = meta

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        return self.model(self.norm(x))


def load(path: str | Path) -> DeployedModel:
    """The model in a ``.dopt`` file, ready to call on raw inputs (eval mode, CPU, float32).

    Raises :class:`~distopt.compress.ArtifactError` for a file that is not a valid artifact
    (or one without its input normalization)."""
    path = Path(path)
    decoded = decode(path.read_bytes(), str(path))
    norm = decoded.meta.get("input") if isinstance(decoded.meta, dict) else None
    if not isinstance(norm, dict):
        raise ArtifactError(f"{path}: the artifact records no input normalization, so raw "
                            "inputs cannot be mapped to what the model was trained on")
    return DeployedModel(decoded.model, InputNorm.from_meta(norm), decoded.meta).eval()
