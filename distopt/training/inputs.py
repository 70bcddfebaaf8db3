"""What the network is fed: the input normalization measured on the training split, and the
augmented training batches (augmentation in [0, 1] pixels, standardization after)."""

from __future__ import annotations

import numpy as np
import torch

from distopt.augment import random_affine, random_tokens
from distopt.config import AugmentConfig
from distopt.data import Splits
from distopt.runtime import InputNorm

__all__ = ["input_norm", "training_batch"]


def input_norm(splits: Splits, resize: int | None = None) -> InputNorm:
    """The normalization of this data: its scale, and the mean and standard deviation of (up to
    10,000) training inputs as the model sees them (resized to ``resize`` x ``resize``)."""
    if splits.tokens:
        return InputNorm(1.0, 0.0, 1.0, tokens=True)
    if splits.id_columns is not None:  # tabular: numbers standardized per column, ids as is
        ids, numbers = splits.id_columns, splits.x_train[:, splits.id_columns:].astype(np.float64)
        std = np.where(numbers.std(0) > 0, numbers.std(0), 1.0)  # a constant column: as is
        return InputNorm(1.0, 0.0, 1.0,
                         column_mean=(0.0,) * ids + tuple(map(float, numbers.mean(0))),
                         column_std=(1.0,) * ids + tuple(map(float, std)))
    sample = splits.x_train[: min(len(splits.x_train), 10_000)]
    if not resize:
        unit = sample.astype(np.float32) * splits.scale
        return InputNorm(splits.scale, float(unit.mean()), float(unit.std()) or 1.0)
    size = (resize, resize)
    resized = InputNorm(splits.scale, 0.0, 1.0, size=size).to_unit(torch.from_numpy(sample))
    return InputNorm(splits.scale, float(resized.mean()), float(resized.std()) or 1.0,
                     size=size)


def training_batch(x: torch.Tensor, norm: InputNorm, augment: AugmentConfig,
                   gen: torch.Generator) -> torch.Tensor:
    """Stored inputs -> augmented network inputs. Images are augmented in [0, 1] pixels, where
    the zeros an affine transform pads with are black background, and standardized after."""
    if norm.tokens:
        return random_tokens(norm(x), augment, gen)
    if norm.tabular:  # rows are not augmented
        return norm(x)
    return norm.standardize(random_affine(norm.to_unit(x), augment, gen))
