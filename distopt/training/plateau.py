"""Early stopping of dense training on a validation plateau."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Plateau"]


@dataclass
class Plateau:
    """Early stopping on a validation plateau: :meth:`update` says True once the validation
    score (the search's quality objective, larger is better: accuracy, AUC, minus log loss)
    has not beaten its best for ``patience`` epochs (never with patience 0)."""

    patience: int
    best: float = -math.inf
    since: int = 0

    def update(self, score: float) -> bool:
        if score > self.best:
            self.best, self.since = score, 0
        else:
            self.since += 1
        return self.patience > 0 and self.since >= self.patience

    def to_dict(self) -> dict[str, float]:
        return {"best": self.best, "since": self.since}
