"""Train once, compress many, across trials: a search keeps each dense model it trained, by the
configuration that trained it, so a later trial that differs only in its compression settings
(``compress.*``) fine-tunes those weights instead of training them again.

A trial's children (``search.children``) fork from their parent's dense weights in memory; this
store does the same for trials that the sampler proposes separately. An entry is the dense
model right after its last dense epoch (before BatchNorm folding and weight pruning), with what
a run needs to continue from it exactly as the trial that trained it would have: the precision
it trained in, the dense epochs it ran (a validation plateau may have ended it early) and every
dense epoch's metrics, which the adopting trial reports again so that early stopping ranks it at
its rungs like any other trial. :func:`dense_key` decides which
configurations share an entry.

Entries live under ``<output>/dense/`` (local or any pyarrow filesystem, like the rest of the
experiment) and are written whole under a temporary name, then moved into place, so a trial
never reads a partial one. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from distopt.storage import Location

if TYPE_CHECKING:
    from distopt.config import Config

log = logging.getLogger(__name__)

__all__ = ["DenseStore", "DenseWeights", "dense_key"]


def dense_key(cfg: Config) -> str:
    """Which configurations train the same dense model: all of them but the compression
    settings (``compress.*``: weight pruning, fine-tuning, bit widths, which act after
    the last dense epoch), the search's settings and the name. Same key, same data, seed
    and hyperparameters, so the same dense weights: the one place this is decided."""
    raw = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "compress", "search")}
    text = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class DenseWeights:
    """A dense model as its last dense epoch left it, and how it got there."""

    spec: dict[str, Any]  # ModelSpec.to_dict()
    state: dict[str, torch.Tensor]  # the model's state_dict (BatchNorm not folded yet)
    dense_epochs: int
    precision: str  # fp32 / bf16 / fp16: the fine-tune continues in it
    history: list[dict[str, Any]] = field(default_factory=list)  # each dense epoch's metrics
    source: str = ""  # the trial that trained it

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"spec": self.spec, "state": self.state, "dense_epochs": self.dense_epochs,
                    "precision": self.precision, "history": self.history,
                    "source": self.source}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DenseWeights:
        # weights_only: an entry is data, never code to execute.
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(spec=d["spec"], state=d["state"], dense_epochs=int(d["dense_epochs"]),
                   precision=str(d["precision"]), history=list(d["history"]),
                   source=str(d["source"]))


class DenseStore:
    """The dense models of one search, at ``uri`` (``<output>/dense``). ``owner`` is the trial
    that uses the store: what it saves names it as the source."""

    SUFFIX = ".pt"

    def __init__(self, uri: str, owner: str) -> None:
        self.uri, self.owner = uri, owner
        self.location = Location(uri)

    def _name(self, cfg: Config) -> str:
        return dense_key(cfg) + self.SUFFIX

    def load(self, cfg: Config) -> DenseWeights | None:
        """The entry of ``cfg``'s dense configuration, or None if no trial has stored one (an
        unreadable entry counts as none: the trial trains, and replaces it)."""
        name = self._name(cfg)
        try:
            if not self.location.is_file(name):
                return None
            return DenseWeights.from_bytes(self.location.read_bytes(
                f"{self.location.root}/{name}"))
        except Exception as e:  # noqa: BLE001 - a damaged entry must not fail the trial
            log.warning("dense store: %s/%s unreadable (%s): training it again", self.uri,
                        name, e)
            return None

    def save(self, cfg: Config, weights: DenseWeights) -> None:
        """Store ``weights`` as ``cfg``'s dense model (atomically: temporary name, then move).
        A store that cannot be written costs later trials a dense training, not this trial
        its result: the failure is logged."""
        name = self._name(cfg)
        tmp = f"{name}.{self.owner}.tmp"
        try:
            self.location.write_bytes(tmp, weights.to_bytes())
            self.location.fs.move(f"{self.location.root}/{tmp}", f"{self.location.root}/{name}")
        except OSError as e:
            log.warning("dense store: could not write %s/%s (%s): later trials of this dense "
                        "configuration will train it again", self.uri, name, e)
            return
        log.debug("dense store: saved %s (trial %s)", name, self.owner)
