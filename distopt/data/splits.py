"""What every data set becomes: train/validation/test arrays (:class:`Splits`), each rank's
shard of an epoch, and the one error a data problem raises."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "Splits", "shard"]


class DataError(RuntimeError):
    """Data could not be read or failed a check; the message names the file and the problem."""


@dataclass(frozen=True)
class Splits:
    """Train/validation/test arrays. Images are ``(N, C, H, W)``, uint8 (scale 1/255) or
    float32 (scale 1); token sequences are ``(N, max_len)`` int32 ids (0 = padding); tabular
    rows ``(N, id_columns + numeric)`` float32, bucket ids first (:mod:`.tabular`); labels
    int64. ``digest`` identifies the data for manifests."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str
    id_columns: int | None = None  # tabular: how many leading columns are bucket ids

    @property
    def scale(self) -> float:
        return 1.0 / 255.0 if self.x_train.dtype == np.uint8 else 1.0

    @property
    def tokens(self) -> bool:
        return self.x_train.dtype == np.int32


def shard(n: int, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool = True
          ) -> np.ndarray:
    """Indices of this rank's part of an epoch: a seeded permutation, strided by rank.

    Every rank gets the same count (the tail is dropped when shuffling) so that DDP ranks take
    the same number of steps and no collective waits forever."""
    if not shuffle:
        return np.arange(rank, n, world_size)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world_size
    return perm[rank::world_size][:per_rank]
