"""An example of your own model in a distopt search: a small CNN written as plain PyTorch, not
one of distopt's families. The config names it (``model.family: examples.tinynet:TinyNet``);
distopt builds it with the config's ``model`` section and prunes, quantizes, clusters and
encodes its Conv2d and Linear layers like a built-in family's.

    python distopt/search.py --config examples/tinynet.yaml   # from the repository's root
"""

from __future__ import annotations

from typing import Any

from torch import nn


def TinyNet(options: dict[str, Any], in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 3x3 convs ('same', each + 2x2 max-pool) of ``channels`` and ``2 * channels``, global
    average pooling, one hidden dense layer of ``dense_units``, dropout before the classifier.
    ``options`` is the config's model section (searchable like any key there)."""
    c = int(options["channels"])
    return nn.Sequential(
        nn.Conv2d(in_shape[0], c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * c, int(options["dense_units"])), nn.ReLU(),
        nn.Dropout(float(options["dropout"])),
        nn.Linear(int(options["dense_units"]), num_classes))
