"""Compression: methods registered as plug-ins (:mod:`.method`): weight pruning
(:mod:`.pruning`), embedding row pruning (:mod:`.row_pruning`), weight clustering (:mod:`.clustering`), weight quantization
(:mod:`.quantization`), activation quantization (:mod:`.activations`: integer-only models,
whose reference is :mod:`.integer`); and the ``.dopt`` artifact whose length is the model size
(:mod:`.artifact`), with its per-tensor codings (:mod:`.codings`).

The artifact is what a user deploys and what every reported compressed accuracy is measured on:
``decode(encode(model))`` is evaluated, never the in-memory model. Nothing here imports Ray.
"""

from __future__ import annotations

from distopt.compress.artifact import (MAX_PARAMS, ArtifactError, Decoded, decode, encode,
                                       size_report, device_report)
from distopt.compress.activations import ActivationQuantization
from distopt.compress.clustering import WeightClustering
from distopt.compress.method import METHODS, CompressionMethod, register
from distopt.compress.pruning import (Masks, apply_masks, global_magnitude_masks, gradual_ratio,
                                      structured_prune)
from distopt.compress.row_pruning import RowPruning
from distopt.compress.quantization import (QuantizedWeights, quantize_per_channel,
                                           quantize_tensor)

__all__ = [
    "ActivationQuantization",
    "ArtifactError",
    "CompressionMethod",
    "Decoded",
    "METHODS",
    "Masks",
    "MAX_PARAMS",
    "QuantizedWeights",
    "RowPruning",
    "apply_masks",
    "decode",
    "encode",
    "global_magnitude_masks",
    "gradual_ratio",
    "quantize_per_channel",
    "quantize_tensor",
    "size_report",
    "device_report",
    "register",
    "structured_prune",
    "WeightClustering",
]
