"""What a configuration's file will cost a device, known before training: the flash, RAM and
MACs of the file it would export (:data:`distopt.constraints.SPEC_METRICS`), from its
architecture and compression alone, so that a search answers a configuration that breaks a
budget on them without training it."""

from __future__ import annotations

import torch

from distopt import metrics as M
from distopt.config import Config
from distopt.constraints import SPEC_METRICS
from distopt.models import build_model, spec_from_config
from distopt.training.compression import Compression

__all__ = ["spec_costs"]


def spec_costs(cfg: Config) -> dict[str, float]:
    """The configuration's model, freshly initialized, compressed as a trial would (every
    method's preview: structured pruning shrinks layers, bit widths and codebooks set the
    codes) and measured as the final file is (``device_report``). Exact for
    :data:`~distopt.constraints.SPEC_METRICS`: training changes weight values, not layers or
    codes (tested at early stopping's rungs); ``size_bytes`` is that of these untrained
    weights (what an answer without training reports)."""
    torch.manual_seed(cfg.train.seed)
    expected = Compression(cfg.compress).expected(build_model(spec_from_config(cfg)))
    return {k: expected[M.RUNG_KEYS[k]] for k in (*SPEC_METRICS, M.SIZE_BYTES)}
