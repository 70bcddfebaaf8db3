"""One training epoch of a run: the step loop (augmented batches, mixed precision, L1 and
distillation terms, gradient clipping, the compression methods' hooks while fine-tuning), then
validation and train accuracy; and the error a diverged loss raises."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from distopt import metrics as M
from distopt.data import shard
from distopt.models import prunable_weights
from distopt.training.distillation import distillation_loss
from distopt.training.distributed import all_sum, unwrap
from distopt.training.evaluation import evaluate, quality_metrics
from distopt.training.inputs import training_batch
from distopt.training.precision import sync

if TYPE_CHECKING:
    from distopt.training.run import TrainingRun

__all__ = ["TrainingDiverged", "nan_artifact_metrics", "train_epoch"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial cannot produce a meaningful model."""


def nan_artifact_metrics() -> dict[str, float]:
    return {k: math.nan for k in M.ALWAYS_REPORTED
            if k not in (M.EPOCH, M.VAL_ACCURACY, M.VAL_AUC, M.VAL_LOGLOSS)}


def train_epoch(run: TrainingRun, epoch: int, phase: str) -> dict[str, Any]:
    """One epoch of ``run``: its shard of the training data in seeded, augmented batches
    (through the compression methods' view of the weights and their after-step hooks while
    fine-tuning), then validation and train accuracy; the epoch's metrics, all-reduced."""
    cfg, env, t = run.cfg, run.env, run.cfg.train
    model, splits = run.model, run.splits
    # The model only changes between epochs: find its weights once per epoch, not per step.
    l1_weights = [w for _, w, _ in prunable_weights(unwrap(model))] \
        if cfg.regularization.l1 else []
    # Fine-tuning: forward/backward (and validation) through the methods' view of the
    # weights (QAT: the artifact's quantized weights).
    finetune = phase == "finetune"
    quantized: Any = run.compression.forward_view(unwrap(model)) if finetune else \
        contextlib.nullcontext()
    # Per-epoch seeding: resumable without generator state, distinct per rank.
    torch.manual_seed(t.seed * 100_003 + epoch * 1_009 + env.rank)
    gen = torch.Generator(device=env.device).manual_seed(t.seed * 7_919 + epoch * 31 +
                                                          env.rank)
    n_train = len(splits.x_train)
    idx = torch.from_numpy(shard(n_train, env.rank, env.world_size, t.seed, epoch)
                           ).to(run.x_all.device)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros((), dtype=torch.int64, device=env.device)
    seen = 0
    sync(env.device)
    t0 = time.perf_counter()
    for step in range(run.steps):
        b = idx[step * t.batch_size:(step + 1) * t.batch_size]
        xb = training_batch(run.x_all[b].to(env.device, non_blocking=True), run.norm,
                            cfg.augment, gen)
        yb = run.y_all[b].to(env.device, non_blocking=True)
        if run.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        run.opt.zero_grad(set_to_none=True)
        with quantized:
            with torch.autocast(env.device.type, dtype=run.dtype,
                                enabled=run.precision != "fp32"):
                out = model(xb)
            loss = F.cross_entropy(out.float(), yb)
            if run.teacher is not None:
                loss = _distilled(run, loss, out, xb)
            total = loss + cfg.regularization.l1 * sum(w.abs().sum() for w in l1_weights) \
                if l1_weights else loss
            run.scaler.scale(total).backward()
        if t.grad_clip:
            run.scaler.unscale_(run.opt)  # clip the true gradients, not fp16-scaled ones
            if finetune:
                run.compression.before_clip(unwrap(model))
            nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scale = run.scaler.get_scale() if run.scaler.is_enabled() else 0.0
        run.scaler.step(run.opt)
        run.scaler.update()
        # fp16: a step with inf/NaN gradients is skipped (and the scale lowered); the learning
        # rate schedule waits for it.
        if run.sched is not None and not (scale and run.scaler.get_scale() < scale):
            run.sched.step()
        if finetune:
            run.compression.after_step(unwrap(model))
        loss_sum += loss.detach() * len(b)
        correct += (out.detach().argmax(1) == yb).sum()
        seen += len(b)
    sync(env.device)
    elapsed = time.perf_counter() - t0
    tr_loss, tr_correct, tr_n, tr_time = all_sum(
        [loss_sum.item(), float(correct.item()), float(seen), elapsed], env)
    if not math.isfinite(tr_loss):
        raise TrainingDiverged(f"non-finite loss at epoch {epoch} ({phase}): lower train.lr "
                               "or the regularization strengths")
    with quantized:
        val = evaluate(model, splits.x_val, splits.y_val, run.norm, env, 512, run.precision,
                       run.channels_last)
        tr_acc = evaluate(model, run.x_probe, run.y_probe, run.norm, env, 512,
                          run.precision, run.channels_last, auc=False).accuracy
    return {M.EPOCH: epoch, M.PHASE: phase, M.TRAIN_LOSS: tr_loss / max(tr_n, 1),
            M.TRAIN_ACCURACY: tr_acc, M.TRAIN_ACCURACY_RUNNING: tr_correct / max(tr_n, 1),
            M.SAMPLES_PER_S: tr_n / (tr_time / env.world_size),
            M.PRECISION: run.precision, **nan_artifact_metrics(), **quality_metrics(val),
            M.GAP: tr_acc - val.accuracy}


def _distilled(run: TrainingRun, loss: torch.Tensor, out: torch.Tensor, xb: torch.Tensor
               ) -> torch.Tensor:
    """The batch's loss mixed with the teacher's softened predictions."""
    t = run.cfg.train
    assert run.teacher is not None
    with torch.no_grad(), torch.autocast(run.env.device.type, dtype=run.dtype,
                                         enabled=run.precision != "fp32"):
        target = run.teacher(xb)
    return distillation_loss(loss, out, target, t.distill_alpha, t.distill_temperature)
