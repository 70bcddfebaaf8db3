"""The per-worker training loop, as named phases (:class:`TrainingRun`) that :func:`fit`
composes: setup, dense training, weight pruning, fine-tuning, export, evaluation of the decoded
artifact. Which compression phases run is the config's :class:`~distopt.config.CompressionPlan`.

Plain PyTorch, in the spirit of nanoGPT's loop. It runs the same as a single process (``rank 0
of 1``, e.g. inside a Tune trial actor) or as one DDP rank of a Ray Train worker group:
:mod:`distopt.orchestration.run` supplies the rank, the device and a :class:`Reporter`, and this
module imports nothing from Ray.

Randomness is derived from ``(seed, epoch, rank)`` at the start of every epoch (shuffling,
augmentation, dropout), so a run resumed from an epoch checkpoint draws the same numbers as an
uninterrupted one without carrying generator state.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distopt import metrics as M
from distopt.augment import random_affine, random_tokens
from distopt.compress import (ArtifactError, Masks, QuantizedWeights, apply_masks, decode,
                              encode, global_magnitude_masks, gradual_ratio, size_report,
                              structured_prune)
from distopt.config import AugmentConfig, CompressionPlan, Config
from distopt.data import Splits, load_splits, shard
from distopt.dense_store import DenseStore, DenseWeights
from distopt.storage import read_file
from distopt.models import (Model, ModelSpec, build_model, example_input, fold_batch_norm,
                            layer_kinds, prunable_weights, spec_from_config)

log = logging.getLogger(__name__)

__all__ = ["WorkerEnv", "Reporter", "TrainingDiverged", "fit", "resolve_precision",
           "evaluate_artifact"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial cannot produce a meaningful model."""


@dataclass(frozen=True)
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, Any], state: dict[str, Any] | None,
                 files: dict[str, bytes] | None = None) -> None:
        """Report one epoch's metrics; ``state`` (rank 0 only) is the checkpoint to keep and
        ``files`` extra files for it (the final artifact)."""


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _time_steps(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None, n: int = 6
                ) -> float:
    """Median seconds of a forward+backward step (no optimizer) after warm-up."""
    times = []
    for i in range(n + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return float(np.median(times))


def cuda_precision(requested: str, capability: tuple[int, int], name: str, recurrent: bool
                   ) -> tuple[str, str]:
    """The precision that really runs on a CUDA device, and why.

    bf16 needs compute capability 8.0 (Ampere): below it cuDNN has no bf16 convolutions and
    ``torch.cuda.is_bf16_supported()`` still says yes (it counts emulation). cuDNN's recurrent
    kernels under autocast do not run in bf16 either, so recurrent models train in fp16 with
    loss scaling there. The reported precision is always what ran."""
    cc = f"{name} (compute capability {capability[0]}.{capability[1]})"
    if requested in ("fp32", "fp16"):
        return requested, "set in the config"
    if recurrent:
        return "fp16", (f"{'bf16 requested, but ' if requested == 'bf16' else ''}cuDNN runs "
                        "recurrent layers in fp16 under autocast: fp16 with loss scaling")
    if capability >= (8, 0):
        return "bf16", ("set in the config" if requested == "bf16" else
                        f"{cc} has native bf16")
    return "fp16", (f"{'bf16 requested, but ' if requested == 'bf16' else ''}{cc} has no native "
                    "bf16 (needs 8.0): fp16 with loss scaling")


def resolve_precision(requested: str, device: torch.device, model: nn.Module,
                      sample: torch.Tensor) -> tuple[str, str]:
    """Pick the training precision for ``auto`` (and correct an impossible one on CUDA) and
    say why: (precision, reason)."""
    if device.type == "cuda":
        recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
        return cuda_precision(requested, torch.cuda.get_device_capability(device),
                              torch.cuda.get_device_name(device), recurrent)
    if requested != "auto":
        return requested, "set in the config"
    if not _cpu_bf16_supported():
        return "fp32", "this CPU has no native bf16 support"
    probe = copy.deepcopy(model)
    fp32_s = _time_steps(probe, sample, None)
    bf16_s = _time_steps(probe, sample, torch.bfloat16)
    if bf16_s < 0.9 * fp32_s:
        return "bf16", f"bf16 step {bf16_s * 1e3:.1f} ms vs fp32 {fp32_s * 1e3:.1f} ms"
    return "fp32", f"bf16 not faster here ({bf16_s * 1e3:.1f} ms vs fp32 {fp32_s * 1e3:.1f} ms)"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputNorm:
    """Maps stored pixels to network inputs: ``(x * scale - mean) / std``, resized to ``size``
    (``data.resize``) before standardizing; token ids pass through as integers. Stored in the
    artifact so that a deployed model preprocesses exactly as in training."""

    scale: float
    mean: float
    std: float
    tokens: bool = False
    size: tuple[int, int] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return x.long()
        return self.standardize(self.to_unit(x))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Stored pixels to [0, 1] (0 = black background): where augmentation happens, so that
        the zeros a transform pads with are background, not mean grey."""
        x = x.float() * self.scale
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            # Bilinear, half-pixel centers, no antialiasing: what ONNX Resize (linear,
            # half_pixel) computes, so the exported graph resizes as training did.
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=False)
        return x

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def shape_after(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one input after this norm (its resize), from the stored shape."""
        return (in_shape[0], *self.size) if self.size and not self.tokens else tuple(in_shape)

    def to_meta(self) -> dict[str, Any]:
        meta = {"scale": self.scale, "mean": self.mean, "std": self.std, "tokens": self.tokens}
        return {**meta, "size": list(self.size)} if self.size else meta

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> InputNorm:
        size = d.get("size")
        return cls(d["scale"], d["mean"], d["std"], bool(d.get("tokens", False)),
                   (int(size[0]), int(size[1])) if size else None)


def input_norm(splits: Splits, resize: int | None = None) -> InputNorm:
    """The normalization of this data: its scale, and the mean and standard deviation of (up to
    10,000) training inputs as the model sees them (resized to ``resize`` x ``resize``)."""
    if splits.tokens:
        return InputNorm(1.0, 0.0, 1.0, tokens=True)
    sample = splits.x_train[: min(len(splits.x_train), 10_000)]
    if not resize:
        unit = sample.astype(np.float32) * splits.scale
        return InputNorm(splits.scale, float(unit.mean()), float(unit.std()) or 1.0)
    size = (resize, resize)
    resized = InputNorm(splits.scale, 0.0, 1.0, size=size).to_unit(torch.from_numpy(sample))
    return InputNorm(splits.scale, float(resized.mean()), float(resized.std()) or 1.0,
                     size=size)


def _all_sum(values: list[float], env: WorkerEnv) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=env.device)  # nccl needs CUDA tensors
    if env.distributed:
        dist.all_reduce(t)
    return t.tolist()


def _unwrap(model: nn.Module) -> Model:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def _wrap(model: Model, env: WorkerEnv, channels_last: bool) -> nn.Module:
    model = model.to(env.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


TRAIN_PROBE_MAX = 5_000  # training rows evaluated each epoch for the train accuracy
DEVICE_DATA_MAX_BYTES = 4 << 30  # training arrays up to this size live on the GPU for a whole fit


def _device_masks(masks: Masks | None, device: torch.device) -> Masks | None:
    """Pruning masks as float multipliers on the parameters' device, made once: restored
    checkpoints hold them on the CPU, and a bool mask would be converted again every step."""
    if not masks:
        return masks
    return {k: v.to(device=device, dtype=torch.float32) for k, v in masks.items()}


def configure_cuda(device: torch.device, tf32: bool) -> None:
    """Set TF32 explicitly (PyTorch's defaults differ between matmuls and cuDNN convolutions)
    and let cuDNN pick the fastest kernels for the fixed batch shapes."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier of dense-training step ``step`` of ``total``: a linear warm-up
    over ``warmup`` steps (large batches), times the cosine decay to 0 if ``schedule`` is
    cosine."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "constant":
        return ramp
    return ramp * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def training_batch(x: torch.Tensor, norm: InputNorm, augment: AugmentConfig,
                   gen: torch.Generator) -> torch.Tensor:
    """Stored inputs -> augmented network inputs. Images are augmented in [0, 1] pixels, where
    the zeros an affine transform pads with are black background, and standardized after."""
    if norm.tokens:
        return random_tokens(norm(x), augment, gen)
    return norm.standardize(random_affine(norm.to_unit(x), augment, gen))


def _make_optimizer(cfg: Config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    t, wd = cfg.train, cfg.regularization.l2
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum, weight_decay=wd)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, norm: InputNorm, env: WorkerEnv,
             batch_size: int, precision: str = "fp32", channels_last: bool = False
             ) -> tuple[float, float]:
    """(mean loss, accuracy) over all of ``x``, each rank taking a strided shard."""
    model.eval()
    idx = shard(len(x), env.rank, env.world_size, 0, 0, shuffle=False)
    # Sums stay on the device: one synchronization per evaluation, not two per batch.
    loss_t = torch.zeros((), dtype=torch.float64, device=env.device)
    correct_t = torch.zeros((), dtype=torch.int64, device=env.device)
    dtype = _DTYPES[precision]
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        xb = norm(torch.from_numpy(x[b]).to(env.device))
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = torch.from_numpy(y[b]).to(env.device)
        with torch.autocast(env.device.type, dtype=dtype, enabled=precision != "fp32"):
            out = model(xb).float()
        loss_t += F.cross_entropy(out, yb, reduction="sum")
        correct_t += (out.argmax(1) == yb).sum()
    loss_sum, correct, n = _all_sum([loss_t.item(), float(correct_t.item()), float(len(idx))],
                                    env)
    return loss_sum / max(n, 1), correct / max(n, 1)


def measure_latency_ms(model: nn.Module, spec: ModelSpec, runs: int = 50) -> float:
    """Median batch-1 CPU latency of ``model`` in fp32, after warm-up, on one thread."""
    model = model.eval().cpu()
    x = example_input(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(10):
                model(x)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1e3)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _nan_artifact_metrics() -> dict[str, float]:
    return {k: math.nan for k in M.ALWAYS_REPORTED if k not in (M.EPOCH, M.VAL_ACCURACY)}


def expected_size(model: Model, plan: CompressionPlan, meta: dict[str, Any] | None = None
                  ) -> int:
    """Bytes of the artifact this dense model would give with the trial's compression applied
    now (pruned, quantized and encoded as at the end, without the fine-tune). Fine-tuning
    changes weights, not which are zero or the bit width, so the final file differs from this
    only by how well the fine-tuned values compress (tested)."""
    base = fold_batch_norm(copy.deepcopy(model).cpu().float().eval()
                           .to(memory_format=torch.contiguous_format))
    if plan.prunes:
        base, _ = weight_prune(base, plan.prune_kind, plan.prune_ratio)
    return len(encode(base, plan.quant_bits, meta, weight_bits(base, plan)))


def weight_bits(model: nn.Module, plan: CompressionPlan) -> dict[str, int]:
    """Every weight's bits under the plan (its layer kind's, else ``quant_bits``)."""
    return {name: plan.bits_of(kind) for name, kind in layer_kinds(model).items()}


def weight_prune(model: Model, kind: str, ratio: float) -> tuple[Model, Masks]:
    """Structured pruning (a smaller model, no masks) or global magnitude masks applied in
    place (the masks, to hold while fine-tuning): the one pruning step of the loop and of
    :func:`expected_size`."""
    if kind == "structured":
        return structured_prune(model, ratio), {}
    masks = global_magnitude_masks(model, ratio)
    apply_masks(model, masks)
    return model, masks


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


class TrainingRun:
    """One configuration's training, as named phases that :func:`fit` composes:

    - :meth:`start` (setup): data, model, precision, optimizer; from a checkpoint if given;
    - :meth:`train_dense`: dense epochs, until ``train.epochs`` or a validation plateau;
    - :meth:`prune`: fold BatchNorm, then weight-prune (global magnitude or structured);
    - :meth:`fine_tune`: epochs with the pruning masks held (and quantized weights with QAT);
    - :meth:`export`: the ``.dopt`` artifact of the final weights;
    - :meth:`evaluate`: the decoded artifact's metrics, the only ones reported at the end.

    Every epoch reports its metrics with a checkpoint of this object's state (rank 0), which
    :meth:`start` resumes from: randomness is derived from seed, epoch and rank, so a resumed
    run draws the same numbers as an uninterrupted one."""

    def __init__(self, cfg: Config, env: WorkerEnv, report: Reporter, splits: Splits) -> None:
        self.cfg, self.env, self.report, self.splits = cfg, env, report, splits
        self.plan = cfg.compression_plan
        self.t_start, self.started_at = time.perf_counter(), time.time()
        self.norm = input_norm(splits, cfg.data.resize)
        self.masks: Masks | None = None
        self.finetuning = False
        self.next_epoch = 0
        self.last: dict[str, Any] = {}
        self.ckpt: dict[str, Any] | None = None
        # The dense model's spec and weights after dense training, kept when children fork
        # from them (:meth:`fork`); its last dense epoch's metrics.
        self.keep_dense = False
        self.dense_spec: ModelSpec | None = None
        self.dense_state: dict[str, torch.Tensor] | None = None
        self.dense_last: dict[str, Any] = {}
        # Every dense epoch's metrics (a dense store replays them), and the trial whose stored
        # dense model this run adopted instead of training its own ("": it trained it).
        self.dense_history: list[dict[str, Any]] = []
        self.dense_source = ""
        self.teacher: nn.Module | None = None  # distillation (train.distill_alpha > 0)

    # ---- setup -----------------------------------------------------------------------------

    @classmethod
    def start(cls, cfg: Config, env: WorkerEnv, report: Reporter, splits: Splits,
              state: dict[str, Any] | None = None) -> TrainingRun:
        run = cls(cfg, env, report, splits)
        t = cfg.train
        run.spec = ModelSpec.from_dict(state["spec"]) if state else spec_from_config(cfg)
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        net = build_model(run.spec)
        run.channels_last = t.channels_last and run.spec.family in ("cnn", "conv1d")
        configure_cuda(env.device, t.tf32)
        if state:
            net.load_state_dict(state["model"])
            run.masks = _device_masks(state.get("masks"), env.device)
            precision, why = state["precision"], "restored from checkpoint"
        else:
            precision, why = run._choose_precision(net)
        if env.rank == 0:
            log.info("precision %s (%s)", precision, why)
        run.precision, run.dtype = precision, _DTYPES[precision]
        run.model = _wrap(net, env, run.channels_last)

        # Dense epochs: train.epochs, or fewer when validation accuracy plateaus.
        run.dense_epochs = state.get("dense_epochs", t.epochs) if state else t.epochs
        run.plateau = Plateau(t.early_stop_patience, **(state.get("plateau") or {})
                              if state else {})
        run.next_epoch = state["epoch"] + 1 if state else 0
        # A checkpoint of the last dense epoch resumes into weight pruning; later ones are
        # fine-tuning.
        run.finetuning = run.next_epoch > run.dense_epochs
        n_train = len(splits.x_train)
        run.steps = (n_train // env.world_size + t.batch_size - 1) // t.batch_size
        if t.max_steps_per_epoch:
            run.steps = min(run.steps, t.max_steps_per_epoch)
        run._new_optimizer()
        if state:
            run.opt.load_state_dict(state["optimizer"])
            if run.sched is not None and state.get("scheduler"):
                run.sched.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                run.scaler.load_state_dict(state["scaler"])
        # The training arrays once on the device (MNIST is 47 MB): each step gathers its batch
        # there, with a device-side index, instead of copying it from host memory.
        run.x_all, run.y_all = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
        if env.device.type == "cuda" and \
                run.x_all.nbytes + run.y_all.nbytes <= DEVICE_DATA_MAX_BYTES:
            run.x_all, run.y_all = run.x_all.to(env.device), run.y_all.to(env.device)
        # Train accuracy for the over/underfitting verdict: a fixed subset of the training data
        # as large as the validation set (at most 5,000), evaluated like it (eval mode: no
        # dropout, no augmentation), so the gap compares like with like.
        probe = np.sort(np.random.default_rng(0).permutation(n_train)[
            :max(1, min(n_train, len(splits.x_val), TRAIN_PROBE_MAX))])
        run.x_probe, run.y_probe = splits.x_train[probe], splits.y_train[probe]
        run.ckpt = state if env.rank == 0 else None
        run.teacher = load_teacher(cfg, splits, env) if cfg.train.distill_alpha > 0 else None
        if state and state.get("dense_model"):
            run.dense_state = state["dense_model"]
            run.dense_spec = ModelSpec.from_dict(state["dense_spec"])
        if state:
            run.dense_history = list(state.get("dense_history") or [])
            run.dense_source = str(state.get("dense_source") or "")
        return run

    def _choose_precision(self, net: nn.Module) -> tuple[str, str]:
        env, t = self.env, self.cfg.train
        sample = self.norm(torch.from_numpy(self.splits.x_train[: t.batch_size])).to(env.device)
        probe_net = net.to(env.device)
        if self.channels_last:
            probe_net = probe_net.to(memory_format=torch.channels_last)
            sample = sample.contiguous(memory_format=torch.channels_last)
        precision, why = resolve_precision(t.precision, env.device, probe_net, sample)
        if env.distributed:  # every rank must train in the same precision: rank 0 decides
            choice = [precision]
            dist.broadcast_object_list(choice, src=0)
            precision = choice[0]
        return precision, why

    def _new_optimizer(self) -> None:
        t = self.cfg.train
        lr = t.lr * (self.cfg.compress.finetune_lr_scale if self.finetuning else 1.0)
        self.opt = _make_optimizer(self.cfg, self.model, lr)
        self.sched = None
        if not self.finetuning and (t.schedule != "constant" or t.warmup_steps):
            total = self.dense_epochs * self.steps
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda s: lr_factor(s, total, t.warmup_steps, t.schedule))
        self.scaler = torch.amp.GradScaler(self.env.device.type,
                                           enabled=self.precision == "fp16")

    # ---- dense training ----------------------------------------------------------------------

    def train_dense(self) -> None:
        """Dense epochs from the next one, until ``dense_epochs`` (which a validation plateau
        may lower)."""
        rung_sizes = self.cfg.search.scheduler == "mo_asha"
        while not self.finetuning and self.next_epoch < self.dense_epochs:
            epoch = self.next_epoch
            metrics = self._epoch(epoch, "train")
            if rung_sizes and self.env.rank == 0:
                # Early stopping ranks trials by size at its rungs: what they'd export now.
                metrics[M.EXPECTED_SIZE_BYTES] = float(expected_size(
                    _unwrap(self.model), self.plan, self.artifact_meta()))
            self.dense_history.append(metrics)
            if self.plateau.update(metrics[M.VAL_ACCURACY]) and epoch + 1 < self.dense_epochs:
                # Every rank sees the same all-reduced accuracy: all stop together.
                log.info("validation accuracy has not improved for %d epochs: dense training "
                         "ends after epoch %d of %d", self.cfg.train.early_stop_patience, epoch,
                         self.cfg.train.epochs)
                self.dense_epochs = epoch + 1
            self._report_epoch(epoch, metrics)
        if self.keep_dense and self.dense_state is None:
            base = _unwrap(self.model)
            self.dense_spec = base.spec
            self.dense_state = {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}
            self.dense_last = dict(self.last)

    def adopt(self, dense: DenseWeights) -> None:
        """Train once, compress many, across trials: take the dense model another trial of the
        same dense configuration trained (:class:`~distopt.dense_store.DenseStore`) instead of
        training one. The run continues from it as that trial did after its last dense epoch
        (its precision, its dense epoch count), so it exports the file it would have exported
        with this run's compression settings. Its dense epochs' metrics are reported again,
        each marked with the source trial, so early stopping ranks this trial at its rungs;
        the size at a rung is this run's compression of the adopted weights."""
        torch.manual_seed(self.cfg.train.seed)
        self.spec = ModelSpec.from_dict(dense.spec)
        net = build_model(self.spec)
        net.load_state_dict(dense.state)
        self.model = _wrap(net, self.env, self.channels_last)
        self.precision, self.dtype = dense.precision, _DTYPES[dense.precision]
        self.dense_epochs = dense.dense_epochs
        self.dense_source = dense.source
        self._new_optimizer()
        rung_size = float(expected_size(net, self.plan, self.artifact_meta())) \
            if self.cfg.search.scheduler == "mo_asha" else None
        for metrics in dense.history:
            metrics = {**metrics, M.DENSE_FROM: dense.source}
            if rung_size is not None:
                metrics[M.EXPECTED_SIZE_BYTES] = rung_size
            self.dense_history.append(metrics)
            self._report_epoch(int(metrics[M.EPOCH]), metrics)
        self.next_epoch = self.dense_epochs

    def dense_weights(self) -> DenseWeights | None:
        """This run's dense model for a dense store, once dense training is over (None if it
        is not kept, or a resumed run lacks some dense epoch's metrics). Only a run that
        trained its dense model stores it, so its history holds no replayed epochs."""
        if self.dense_state is None or self.dense_spec is None or \
                len(self.dense_history) != self.dense_epochs:
            return None
        return DenseWeights(spec=self.dense_spec.to_dict(), state=self.dense_state,
                            dense_epochs=self.dense_epochs, precision=self.precision,
                            history=list(self.dense_history))

    # ---- weight pruning ----------------------------------------------------------------------

    def prune(self) -> None:
        """Dense training is over: fold BatchNorm (it has done its job: fine-tuning and the
        artifact use the folded convs), then weight-prune."""
        base = fold_batch_norm(_unwrap(self.model).cpu().eval()).train()
        base = base.cpu().to(memory_format=torch.contiguous_format)
        base, masks = weight_prune(base, self.plan.prune_kind, self._sparsity(0))
        self.model = _wrap(base, self.env, self.channels_last)
        self.masks = _device_masks(masks, self.env.device)
        self.finetuning = True
        self._new_optimizer()

    def _sparsity(self, k: int) -> float:
        """Sparsity of fine-tune epoch k (the gradual schedule raises it epoch by epoch)."""
        if not self.plan.gradual:
            return self.plan.prune_ratio
        return gradual_ratio(self.plan.prune_ratio, k, max(self.plan.finetune_epochs, 1))

    def compress(self) -> None:
        """Weight pruning and the fine-tune epochs, if the plan prunes (a run resumed inside
        fine-tuning is pruned already)."""
        if self.plan.prunes:
            if not self.finetuning:
                self.prune()
            self.fine_tune()

    def fork(self, cfg: Config) -> TrainingRun:
        """Train once, compress many: a run of ``cfg``'s compression plan from this run's
        dense weights, which continues at the first fine-tune epoch as a run of that plan
        from scratch would (same epoch numbers, so the same seeded batches, augmentation and
        dropout; a fresh fine-tune optimizer), so its artifact is the one that run would
        export. It shares this run's data, normalization and precision and reports nothing
        per epoch (its result is its parent's to report)."""
        assert self.dense_state is not None and self.dense_spec is not None
        child = copy.copy(self)
        child.cfg, child.plan = cfg, cfg.compression_plan
        child.report = lambda metrics, state, files=None: None
        torch.manual_seed(cfg.train.seed)
        net = build_model(self.dense_spec)
        net.load_state_dict(self.dense_state)
        child.model = _wrap(net, self.env, self.channels_last)
        child.masks, child.finetuning, child.ckpt = None, False, None
        child.next_epoch = self.dense_epochs
        child.last = dict(self.dense_last)
        child.keep_dense = False
        child.t_start, child.started_at = time.perf_counter(), time.time()
        child._new_optimizer()
        return child

    # ---- fine-tuning -------------------------------------------------------------------------

    def fine_tune(self) -> None:
        """Epochs with the masks held, up to ``dense_epochs + finetune_epochs``."""
        while self.next_epoch < self.dense_epochs + self.plan.finetune_epochs:
            epoch = self.next_epoch
            if self.plan.gradual and epoch > self.dense_epochs:
                # Raise sparsity for this epoch; weights pruned before are 0, so stay pruned.
                base = _unwrap(self.model)
                self.masks = _device_masks(global_magnitude_masks(
                    base, self._sparsity(epoch - self.dense_epochs)), self.env.device)
                apply_masks(base, self.masks)
            self._report_epoch(epoch, self._epoch(epoch, "finetune"))

    # ---- one epoch -----------------------------------------------------------------------------

    def _epoch(self, epoch: int, phase: str) -> dict[str, Any]:
        cfg, env, t = self.cfg, self.env, self.cfg.train
        model, splits = self.model, self.splits
        # The model only changes between epochs: find its weights once per epoch, not per step.
        l1_weights = [w for _, w, _ in prunable_weights(_unwrap(model))] \
            if cfg.regularization.l1 else []
        # QAT: forward/backward (and validation) with the artifact's quantized weights.
        quantized: Any = QuantizedWeights(_unwrap(model), self.plan.quant_bits,
                                          weight_bits(_unwrap(model), self.plan)) \
            if phase == "finetune" and self.plan.qat else contextlib.nullcontext()
        # Per-epoch seeding: resumable without generator state, distinct per rank.
        torch.manual_seed(t.seed * 100_003 + epoch * 1_009 + env.rank)
        gen = torch.Generator(device=env.device).manual_seed(t.seed * 7_919 + epoch * 31 +
                                                              env.rank)
        n_train = len(splits.x_train)
        idx = torch.from_numpy(shard(n_train, env.rank, env.world_size, t.seed, epoch)
                               ).to(self.x_all.device)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        correct = torch.zeros((), dtype=torch.int64, device=env.device)
        seen = 0
        _sync(env.device)
        t0 = time.perf_counter()
        for step in range(self.steps):
            b = idx[step * t.batch_size:(step + 1) * t.batch_size]
            xb = training_batch(self.x_all[b].to(env.device, non_blocking=True), self.norm,
                                cfg.augment, gen)
            yb = self.y_all[b].to(env.device, non_blocking=True)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            self.opt.zero_grad(set_to_none=True)
            with quantized:
                with torch.autocast(env.device.type, dtype=self.dtype,
                                    enabled=self.precision != "fp32"):
                    out = model(xb)
                loss = F.cross_entropy(out.float(), yb)
                if self.teacher is not None:
                    loss = self._distilled(loss, out, xb)
                total = loss + cfg.regularization.l1 * sum(w.abs().sum() for w in l1_weights) \
                    if l1_weights else loss
                self.scaler.scale(total).backward()
            if t.grad_clip:
                self.scaler.unscale_(self.opt)  # clip the true gradients, not fp16-scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.sched is not None:
                self.sched.step()
            if self.masks:
                apply_masks(_unwrap(model), self.masks)
            loss_sum += loss.detach() * len(b)
            correct += (out.detach().argmax(1) == yb).sum()
            seen += len(b)
        _sync(env.device)
        elapsed = time.perf_counter() - t0
        tr_loss, tr_correct, tr_n, tr_time = _all_sum(
            [loss_sum.item(), float(correct.item()), float(seen), elapsed], env)
        if not math.isfinite(tr_loss):
            raise TrainingDiverged(f"non-finite loss at epoch {epoch} ({phase}): lower train.lr "
                                   "or the regularization strengths")
        with quantized:
            val_loss, val_acc = evaluate(model, splits.x_val, splits.y_val, self.norm, env, 512,
                                         self.precision, self.channels_last)
            _, tr_acc = evaluate(model, self.x_probe, self.y_probe, self.norm, env, 512,
                                 self.precision, self.channels_last)
        return {M.EPOCH: epoch, M.PHASE: phase, M.TRAIN_LOSS: tr_loss / max(tr_n, 1),
                M.TRAIN_ACCURACY: tr_acc, M.TRAIN_ACCURACY_RUNNING: tr_correct / max(tr_n, 1),
                M.VAL_LOSS: val_loss, M.VAL_ACCURACY: val_acc, M.GAP: tr_acc - val_acc,
                M.SAMPLES_PER_S: tr_n / (tr_time / env.world_size),
                M.PRECISION: self.precision, **_nan_artifact_metrics()}

    def _distilled(self, loss: torch.Tensor, out: torch.Tensor, xb: torch.Tensor
                   ) -> torch.Tensor:
        """(1 - alpha) x the cross-entropy + alpha x T^2 x KL(teacher || student) on the
        batch's softened predictions (Hinton et al. 2015; T^2 keeps the gradient scale)."""
        t = self.cfg.train
        assert self.teacher is not None
        with torch.no_grad(), torch.autocast(self.env.device.type, dtype=self.dtype,
                                             enabled=self.precision != "fp32"):
            target = self.teacher(xb)
        temp = t.distill_temperature
        kd = F.kl_div(F.log_softmax(out.float() / temp, dim=1),
                      F.log_softmax(target.float() / temp, dim=1), log_target=True,
                      reduction="batchmean") * temp * temp
        return (1 - t.distill_alpha) * loss + t.distill_alpha * kd

    def _report_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.ckpt = None
        if self.env.rank == 0:
            base = _unwrap(self.model)
            self.ckpt = {
                "epoch": epoch, "spec": base.spec.to_dict(), "precision": self.precision,
                "dense_epochs": self.dense_epochs, "plateau": self.plateau.to_dict(),
                "model": {k: v.detach().cpu().contiguous() for k, v in base.state_dict().items()},
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "masks": {k: v.bool().cpu() for k, v in self.masks.items()}
                if self.masks else None,
                # Children fork from the dense weights: a fine-tune checkpoint keeps them.
                "dense_model": self.dense_state if self.finetuning else None,
                "dense_spec": self.dense_spec.to_dict() if self.dense_spec else None,
                "dense_history": self.dense_history, "dense_source": self.dense_source}
        self.last = metrics
        self.next_epoch = epoch + 1
        self.report(metrics, self.ckpt)

    # ---- export and evaluation ---------------------------------------------------------------

    def artifact_meta(self) -> dict[str, Any]:
        return {"input": self.norm.to_meta(), "config_name": self.cfg.name,
                "data_digest": self.splits.digest}

    def export(self) -> bytes:
        """The artifact of the final weights (BatchNorm folded, quantized, encoded)."""
        base = fold_batch_norm(_unwrap(self.model).cpu()
                               .to(memory_format=torch.contiguous_format).eval())
        return encode(base, self.plan.quant_bits, self.artifact_meta(),
                      weight_bits(base, self.plan))

    def ort_latency_ms(self, artifact: bytes) -> float:
        """Batch-1 latency of the artifact exported to ONNX, on ONNX Runtime (one thread):
        measured only when it is an objective (the export takes a few milliseconds)."""
        from distopt.export import example_feed, measure_ort_latency_ms, to_onnx

        return measure_ort_latency_ms(to_onnx(decode(artifact)), example_feed(self.spec))

    def evaluate(self, artifact: bytes, evaluate_test: bool) -> dict[str, Any]:
        """Metrics of the model decoded from ``artifact`` (never of the in-memory model), on
        the CPU in fp32 as `distopt evaluate` measures them: each rank evaluates whole splits
        itself (no TF32, no autocast, no cross-rank sums), so every rank holds the same
        numbers."""
        splits, norm, env = self.splits, self.norm, self.env
        decoded = decode(artifact).model
        cpu = WorkerEnv()
        final = dict(self.last)
        final.update(size_report(decoded, artifact))
        final[M.VAL_LOSS], final[M.VAL_ACCURACY] = evaluate(decoded, splits.x_val, splits.y_val,
                                                            norm, cpu, 512)
        final[M.LATENCY_MS] = measure_latency_ms(copy.deepcopy(decoded), self.spec) \
            if env.rank == 0 else math.nan
        final[M.LATENCY_MS] = _broadcast_float(final[M.LATENCY_MS], env)
        if any(name == M.ORT_LATENCY_MS for name, _ in self.cfg.search.objectives):
            final[M.ORT_LATENCY_MS] = _broadcast_float(
                self.ort_latency_ms(artifact) if env.rank == 0 else math.nan, env)
        _, final[M.TRAIN_ACCURACY] = evaluate(decoded, self.x_probe, self.y_probe, norm, cpu, 512)
        final[M.GAP] = final[M.TRAIN_ACCURACY] - final[M.VAL_ACCURACY]
        if evaluate_test and len(splits.x_test):
            _, final[M.TEST_ACCURACY] = evaluate(decoded, splits.x_test, splits.y_test, norm,
                                                 cpu, 512)
        t = self.cfg.train
        final[M.PHASE] = "final"
        final[M.PRECISION] = self.precision
        final[M.TF32] = bool(t.tf32 and env.device.type == "cuda")
        final[M.TRAIN_SECONDS] = time.perf_counter() - self.t_start
        final[M.DENSE_EPOCHS] = self.dense_epochs
        final[M.EARLY_STOPPED] = self.dense_epochs < t.epochs
        final[M.DENSE_FROM] = self.dense_source
        final["started_at"] = self.started_at  # wall clock: callers measure start-up overhead
        final["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return final


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


def fit(cfg: Config, env: WorkerEnv, report: Reporter, state: dict[str, Any] | None = None,
        evaluate_test: bool = False, splits: Splits | None = None,
        children: Sequence[tuple[dict[str, Any], Config]] = (),
        dense_store: DenseStore | None = None) -> dict[str, Any]:
    """Train, weight-prune, fine-tune, export and evaluate one configuration: the phases of
    :class:`TrainingRun`, in order, each resuming where ``state`` (a checkpoint) left off.

    ``children`` (``(values, config)`` pairs: :meth:`Config.child_configs`) are compressed
    from the same dense weights after the run's own artifact (:meth:`TrainingRun.fork`): the
    dense model is trained once. Reports after every epoch (with a checkpoint ``state`` on
    rank 0) and once more at the end with the decoded artifact's metrics (phase ``final``),
    whose ``children`` key holds every child's values, metrics and file (``child_<i>.dopt``,
    reported beside ``model.dopt``); ``train_seconds`` then covers the children too.

    ``dense_store``: a run that starts afresh adopts the stored dense model of its dense
    configuration if there is one (:meth:`TrainingRun.adopt`; ``dense_from`` in the final
    metrics names its trial), and one that trains its own stores it. Returns
    ``{"metrics": ..., "artifact": bytes, "children": [...]}`` (the same on every rank)."""
    splits = splits if splits is not None else load_splits(cfg.data)
    run = TrainingRun.start(cfg, env, report, splits, state)
    run.keep_dense = bool(children) or dense_store is not None
    adopted = _stored_dense(dense_store, cfg, env) if state is None else None
    if adopted is not None:
        run.adopt(adopted)
        if env.rank == 0:
            log.info("dense model of trial %s adopted (same dense configuration): %d dense "
                     "epochs not trained again", adopted.source, adopted.dense_epochs)
    run.train_dense()
    if dense_store is not None and not run.dense_source and env.rank == 0:
        weights = run.dense_weights()
        if weights is not None:
            weights.source = dense_store.owner
            dense_store.save(cfg, weights)
    run.compress()
    artifact = run.export()
    final = run.evaluate(artifact, evaluate_test)
    files = {M.ARTIFACT_FILE: artifact}
    records: list[dict[str, Any]] = []
    if children and run.dense_state is None:
        log.warning("resumed from a checkpoint without the dense weights: no children")
    elif children:
        for i, (values, child_cfg) in enumerate(children):
            child = run.fork(child_cfg)
            child.compress()
            child_artifact = child.export()
            metrics = child.evaluate(child_artifact, evaluate_test)
            files[child_file(i)] = child_artifact
            records.append({"params": values, "file": child_file(i), "metrics": {
                k: v for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "started_at"}})
        final[M.CHILDREN] = json.dumps(records, default=float)
        final[M.TRAIN_SECONDS] = time.perf_counter() - run.t_start
    report(final, run.ckpt, files if env.rank == 0 else None)
    return {"metrics": final, "artifact": artifact, "children": records}


def _stored_dense(store: DenseStore | None, cfg: Config, env: WorkerEnv) -> DenseWeights | None:
    """The store's dense model for ``cfg``, as rank 0 finds it, on every rank (ranks may not
    share a filesystem, and must all decide alike)."""
    if store is None:
        return None
    found = store.load(cfg) if env.rank == 0 else None
    if env.distributed:
        box = [found]
        dist.broadcast_object_list(box, src=0)
        found = box[0]
    return found


def child_file(i: int) -> str:
    """The artifact file of a trial's i-th child, beside its ``model.dopt``."""
    return M.CHILD_ARTIFACT.format(index=i)


def _broadcast_float(value: float, env: WorkerEnv) -> float:
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return float(box[0])


def evaluate_artifact(data: bytes, splits: Splits, which: str = "test",
                      source: str = "artifact") -> dict[str, float]:
    """Accuracy of a decoded artifact on a split, on CPU in fp32, using its stored input norm.

    A file without a valid input normalization, or for inputs of another shape than the data's,
    raises :class:`ArtifactError` naming the mismatch."""
    dec = decode(data, source)
    try:
        norm = InputNorm.from_meta(dec.meta["input"])
        if not all(math.isfinite(v) for v in (norm.scale, norm.mean, norm.std)) or norm.std <= 0:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{source}: no valid input normalization in its meta") from None
    x, y = (splits.x_test, splits.y_test) if which == "test" else (splits.x_val, splits.y_val)
    if tuple(dec.model.spec.in_shape) != norm.shape_after(tuple(x.shape[1:])):
        raise ArtifactError(f"{source}: the model takes inputs of shape "
                            f"{list(dec.model.spec.in_shape)}, the data's are {list(x.shape[1:])}"
                            + (f" (resized to {list(norm.size)})" if norm.size else ""))
    loss, acc = evaluate(dec.model, x, y, norm, WorkerEnv(), 512)
    return {f"{which}_loss": loss, f"{which}_accuracy": acc, M.SIZE_BYTES: len(data)}
