"""Weight clustering (Deep Compression's weight sharing, Han et al. 2016): every weight tensor's
non-zero weights take one of ``k`` shared values, found by k-means from a linear initialization
(the paper's best: it keeps the rare large weights as centroids), fine-tuned as shared values,
and stored as a codebook (:class:`~distopt.compress.coding.Codebook`): the values once, each
weight the index of its value.

A registered compression method (``compress.cluster``): it claims the weights it clusters, so
quantization does not round them, and works after pruning (plan order): pruned zeros stay zero
and are never a cluster. Knows nothing of training or Ray.
"""

from __future__ import annotations

from typing import Any

import torch

from distopt.compress.coding import Codebook, Coding
from distopt.compress.method import CompressionMethod, register
from distopt.config import CompressConfig
from distopt.models import Model, prunable_weights

__all__ = ["WeightClustering", "kmeans_1d", "share_values"]

KMEANS_ITERATIONS = 30


@torch.no_grad()
def kmeans_1d(values: torch.Tensor, k: int, iterations: int = KMEANS_ITERATIONS
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars from ``k`` centroids spread evenly over [min, max]:
    (centroids ascending, float32; each value's cluster, int64). Empty clusters keep their
    centroid; stops once no assignment changes."""
    v = values.detach().float().flatten()
    centroids = torch.linspace(float(v.min()), float(v.max()), k) if v.numel() else \
        torch.zeros(k)
    assign = torch.zeros(v.numel(), dtype=torch.int64)
    for i in range(iterations):
        edges = (centroids[1:] + centroids[:-1]) / 2  # nearest centroid: between midpoints
        new = torch.bucketize(v, edges)
        if i and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros(k).index_add_(0, assign, v)
        counts = torch.bincount(assign, minlength=k).float()
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids, assign


@torch.no_grad()
def share_values(w: torch.Tensor, assign: torch.Tensor, k: int) -> None:
    """Set every clustered weight (``assign >= 0``) to its cluster's mean, rounded to float16
    (so the codebook stores it exactly in half the bytes); unclustered ones (pruned: -1) to 0.
    After an optimizer step this is the shared-value update: each centroid moves by the mean of
    its members' updates."""
    flat = w.reshape(-1)  # logical order, whatever the memory format (a copy if need be)
    member = assign >= 0
    a = assign.clamp(min=0)
    sums = torch.zeros(k, device=w.device, dtype=torch.float32).index_add_(
        0, a[member], flat[member].float())
    counts = torch.bincount(a[member], minlength=k).float()
    means = (sums / counts.clamp(min=1)).half().float()
    shared = torch.where(member, means[a], torch.zeros_like(flat, dtype=torch.float32))
    w.copy_(shared.to(w.dtype).reshape(w.shape))


@register
class WeightClustering(CompressionMethod):
    """``compress.cluster.k`` > 0: each weight tensor's non-zero weights share k values."""

    name = "clustering"
    order = 20  # after pruning (zeros are final), before quantization codes the rest
    checkpoint_keys = ("clusters",)

    def __init__(self, k: int) -> None:
        self.k = k
        self.assign: dict[str, torch.Tensor] = {}  # weight name -> cluster per weight, -1 = 0

    @classmethod
    def from_config(cls, compress: CompressConfig) -> WeightClustering | None:
        return cls(compress.cluster.k) if compress.cluster.k > 0 else None

    @property
    def fine_tunes(self) -> bool:
        return True

    def _cluster(self, model: Model) -> dict[str, torch.Tensor]:
        out = {}
        for name, w, _ in prunable_weights(model):
            flat = w.detach().reshape(-1)
            nz = flat != 0
            assign = torch.full((flat.numel(),), -1, dtype=torch.int64, device=w.device)
            if bool(nz.any()):
                _, clusters = kmeans_1d(flat[nz].cpu(), self.k)
                assign[nz] = clusters.to(w.device)
            share_values(w.data, assign, self.k)
            out[name] = assign
        return out

    def preview(self, model: Model) -> Model:
        self._cluster(model)
        return model

    def begin(self, model: Model, device: torch.device) -> Model:
        self.assign = {n: a.to(device) for n, a in self._cluster(model).items()}
        return model

    def after_step(self, model: Model) -> None:
        for name, w, _ in prunable_weights(model):
            share_values(w.data, self.assign[name], self.k)  # on w's device since begin

    def claim_codings(self, model: Model, codings: dict[str, Coding]) -> None:
        for name, _, _ in prunable_weights(model):
            # k shared values, and the zero of pruned weights where the index stores them.
            codings.setdefault(name, Codebook(self.k + 1))

    def checkpoint(self) -> dict[str, Any]:
        return {"clusters": {n: a.to(torch.int16 if self.k < 32_000 else torch.int32).cpu()
                             for n, a in self.assign.items()} or None}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.assign = {n: a.to(device=device, dtype=torch.int64)
                       for n, a in (state.get("clusters") or {}).items()}
