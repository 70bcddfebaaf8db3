"""What a training worker is (its rank, world size and device) and the few collectives the loop
needs: the same code runs as one process (rank 0 of 1, e.g. inside a Tune trial actor) or as one
DDP rank of a Ray Train worker group. Nothing here imports Ray."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from distopt.models import Model

__all__ = ["WorkerEnv", "all_sum", "all_sum_tensor", "broadcast_float", "broadcast_object",
           "unwrap", "wrap"]


@dataclass(frozen=True)
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()



def all_sum(values: list[float], env: WorkerEnv) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=env.device)  # nccl needs CUDA tensors
    if env.distributed:
        dist.all_reduce(t)
    return t.tolist()


def all_sum_tensor(t: torch.Tensor, env: WorkerEnv) -> torch.Tensor:
    """``t`` summed over all ranks (in place), on its device."""
    if env.distributed:
        dist.all_reduce(t)
    return t


def unwrap(model: nn.Module) -> Model:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def wrap(model: Model, env: WorkerEnv, channels_last: bool) -> nn.Module:
    model = model.to(env.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model



def broadcast_object(value: object, env: WorkerEnv) -> object:
    """Rank 0's ``value`` on every rank (itself when not distributed)."""
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_float(value: float, env: WorkerEnv) -> float:
    return float(broadcast_object(value, env))  # type: ignore[arg-type]
