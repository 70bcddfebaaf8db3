"""Where a search keeps its state, by one name for every reader: Ray's (Tune experiment,
Train runs), the dense store, and the Optuna study."""

from __future__ import annotations

from dataclasses import dataclass

from distopt import metrics as M
from distopt.storage import Location

__all__ = ["SearchPaths"]


@dataclass(frozen=True)
class SearchPaths:
    """Where a search keeps its state: Ray's (Tune experiment, Train runs) at the output
    location, local or remote; the Optuna SQLite study in the driver's local directory."""

    output: Location

    @property
    def tune(self) -> str:
        return self.output.uri("tune")

    @property
    def train(self) -> str:
        return self.output.uri("train")

    @property
    def dense(self) -> str:
        """The dense models trials store for each other (``search.reuse_dense``)."""
        return self.output.uri(M.DENSE_DIR)

    @property
    def study_url(self) -> str:
        return f"sqlite:///{(self.output.local / 'study.db').resolve()}"
