"""Early stopping of dense training on a validation plateau."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Plateau"]


@dataclass
class Plateau:
    """Early stopping on a validation plateau: :meth:`update` says True once validation
    accuracy has not beaten its best for ``patience`` epochs (never with patience 0)."""

    patience: int
    best: float = -math.inf
    since: int = 0

    def update(self, val_accuracy: float) -> bool:
        if val_accuracy > self.best:
            self.best, self.since = val_accuracy, 0
        else:
            self.since += 1
        return self.patience > 0 and self.since >= self.patience

    def to_dict(self) -> dict[str, float]:
        return {"best": self.best, "since": self.since}
