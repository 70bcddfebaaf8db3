"""Knowledge distillation (Hinton et al. 2015): the teacher a distilling run learns from, and
the loss that mixes its softened predictions into the student's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distopt.compress import decode
from distopt.config import Config
from distopt.data import Splits
from distopt.storage import read_file
from distopt.training.distributed import WorkerEnv

__all__ = ["distillation_loss", "load_teacher"]


def load_teacher(cfg: Config, splits: Splits, env: WorkerEnv) -> nn.Module:
    """The teacher of a distilling run (``train.teacher_path``: a ``.dopt`` file, local or a
    URI), decoded, in eval mode, on the run's device. It must have been trained on the same
    data (the artifact records its data digest) and takes the same normalized inputs."""
    path = cfg.train.teacher_path
    if not path:
        raise ValueError("train.distill_alpha > 0 needs train.teacher_path (a search or "
                         "`distopt train` sets it to the teacher it trains)")
    decoded = decode(read_file(path), path)
    digest = decoded.meta.get("data_digest")
    if digest != splits.digest:
        raise ValueError(f"train.teacher_path: {path} was trained on data {digest!r}, this run "
                         f"uses {splits.digest!r}")
    teacher = decoded.model.eval().to(env.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distillation_loss(loss: torch.Tensor, out: torch.Tensor, target: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """(1 - alpha) x the cross-entropy ``loss`` + alpha x T^2 x KL(teacher || student) on the
    batch's softened predictions (T^2 keeps the gradient scale)."""
    kd = F.kl_div(F.log_softmax(out.float() / temperature, dim=1),
                  F.log_softmax(target.float() / temperature, dim=1), log_target=True,
                  reduction="batchmean") * temperature * temperature
    return (1 - alpha) * loss + alpha * kd
