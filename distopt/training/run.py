"""One configuration's training as named phases (:class:`TrainingRun`), which
:func:`distopt.training.fit.fit` composes: setup, dense training, weight pruning, fine-tuning,
export, evaluation of the decoded artifact. Which compression methods run, and whether they
fine-tune, is decided by the config's ``compress`` section through :class:`Compression`.

Plain PyTorch, in the spirit of nanoGPT's loop. It runs the same as a single process (``rank 0
of 1``, e.g. inside a Tune trial actor) or as one DDP rank of a Ray Train worker group:
:mod:`distopt.orchestration.run` supplies the rank, the device and a :class:`Reporter`, and this
module imports nothing from Ray.

Randomness is derived from ``(seed, epoch, rank)`` at the start of every epoch (shuffling,
augmentation, dropout), so a run resumed from an epoch checkpoint draws the same numbers as an
uninterrupted one without carrying generator state.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from distopt import metrics as M
from distopt.config import Config
from distopt.data import Splits
from distopt.models import ModelSpec, build_model, family_of, fold_batch_norm, spec_from_config
from distopt.training.checkpoint import Checkpoint
from distopt.training.compression import Compression
from distopt.training.dense_store import DenseWeights
from distopt.training.distillation import load_teacher
from distopt.training.distributed import WorkerEnv, unwrap, wrap
from distopt.training.epoch import TrainingDiverged, train_epoch
from distopt.training.inputs import input_norm
from distopt.training.optim import lr_factor, make_optimizer
from distopt.training.plateau import Plateau
from distopt.training.precision import DTYPES, configure_cuda, resolve_precision

log = logging.getLogger(__name__)

__all__ = ["Reporter", "TrainingDiverged", "TrainingRun"]

TRAIN_PROBE_MAX = 5_000  # training rows evaluated each epoch for the train accuracy
CALIBRATION_SAMPLES = 1024  # training inputs an integer model's activation grids are set on
DEVICE_DATA_MAX_BYTES = 4 << 30  # training arrays up to this size live on the GPU for a whole fit


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, Any], state: dict[str, Any] | None,
                 files: dict[str, bytes] | None = None) -> None:
        """Report one epoch's metrics; ``state`` (rank 0 only) is the checkpoint to keep and
        ``files`` extra files for it (the final artifact)."""


class TrainingRun:
    """One configuration's training, as named phases that :func:`fit` composes:

    - :meth:`start` (setup): data, model, precision, optimizer; from a checkpoint if given;
    - :meth:`train_dense`: dense epochs, until ``train.epochs`` or a validation plateau;
    - :meth:`begin_compression`: fold BatchNorm, then every compression method begins (pruning);
    - :meth:`fine_tune`: epochs through the methods' hooks (masks held, QAT views);
    - :meth:`export`: the ``.dopt`` artifact of the final weights, whose decoded model's
      metrics (:func:`distopt.training.final.final_metrics`) are the only ones reported at the
      end.

    One epoch is :func:`distopt.training.epoch.train_epoch`; the checkpoint's schema is
    :class:`distopt.training.checkpoint.Checkpoint`.

    Every epoch reports its metrics with a checkpoint of this object's state (rank 0), which
    :meth:`start` resumes from: randomness is derived from seed, epoch and rank, so a resumed
    run draws the same numbers as an uninterrupted one."""

    def __init__(self, cfg: Config, env: WorkerEnv, report: Reporter, splits: Splits) -> None:
        """Every attribute of a run, declared here; :meth:`start` fills in the model, precision,
        optimizer and data from the config or a checkpoint."""
        t = cfg.train
        self.cfg, self.env, self.report, self.splits = cfg, env, report, splits
        self.compression = Compression(cfg.compress)
        self.t_start, self.started_at = time.perf_counter(), time.time()
        self.norm = input_norm(splits, cfg.data.resize)
        # The model and how it trains.
        self.spec: ModelSpec = spec_from_config(cfg)
        self.channels_last = False  # set with the spec's family in start
        self.model: nn.Module = nn.Identity()
        self.precision, self.dtype = "fp32", DTYPES["fp32"]
        self.opt: torch.optim.Optimizer | None = None
        self.sched: torch.optim.lr_scheduler.LambdaLR | None = None
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=False)
        self.teacher: nn.Module | None = None  # distillation (train.distill_alpha > 0)
        # Where the run is: dense epochs (train.epochs, or fewer on a validation plateau),
        # the next epoch, whether fine-tuning has begun, optimizer steps per epoch.
        self.dense_epochs = t.epochs
        self.plateau = Plateau(t.early_stop_patience)
        # What the plateau watches: the search's quality objective (val_accuracy by default).
        self.plateau_metric = M.quality(cfg.search.objectives)
        self.next_epoch = 0
        self.finetuning = False
        self.steps = 0
        # The data: training arrays (on the device where they fit), the fixed training subset
        # evaluated each epoch for the train accuracy.
        self.x_all = self.y_all = torch.empty(0)
        self.x_probe = self.y_probe = np.empty(0)
        # What the run reports: the last epoch's metrics and checkpoint (rank 0).
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
        self.resumed_from = -1  # the checkpoint's epoch this run resumed from; -1: from scratch

    # ---- setup -----------------------------------------------------------------------------

    @classmethod
    def start(cls, cfg: Config, env: WorkerEnv, report: Reporter, splits: Splits,
              state: dict[str, Any] | None = None) -> TrainingRun:
        run = cls(cfg, env, report, splits)
        t = cfg.train
        ck = Checkpoint.from_dict(state) if state else None
        if ck is not None:
            run.spec = ModelSpec.from_dict(ck.spec)
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        net = build_model(run.spec)
        run.channels_last = t.channels_last and family_of(run.spec.family).channels_last
        configure_cuda(env.device, t.tf32)
        if ck is not None:
            net.load_state_dict(ck.model)
            run.compression.restore(ck.methods, env.device)
            precision, why = ck.precision, "restored from checkpoint"
        else:
            precision, why = run._choose_precision(net)
        if env.rank == 0:
            log.info("precision %s (%s)", precision, why)
        run.precision, run.dtype = precision, DTYPES[precision]
        run.model = wrap(net, env, run.channels_last)
        if ck is not None:
            run.dense_epochs = ck.dense_epochs if ck.dense_epochs is not None else t.epochs
            run.plateau = Plateau(t.early_stop_patience, **ck.plateau)
            run.next_epoch = ck.epoch + 1
            run.resumed_from = ck.epoch
            # A checkpoint of the last dense epoch resumes into the compression methods'
            # start; later ones are fine-tuning.
            run.finetuning = run.next_epoch > run.dense_epochs
        n_train = len(splits.x_train)
        run.steps = (n_train // env.world_size + t.batch_size - 1) // t.batch_size
        if t.max_steps_per_epoch:
            run.steps = min(run.steps, t.max_steps_per_epoch)
        run._new_optimizer()
        if ck is not None:
            run.opt.load_state_dict(ck.optimizer)
            if run.sched is not None and ck.scheduler:
                run.sched.load_state_dict(ck.scheduler)
            if ck.scaler:
                run.scaler.load_state_dict(ck.scaler)
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
        if ck is not None:
            if ck.dense_model and ck.dense_spec:
                run.dense_state = ck.dense_model
                run.dense_spec = ModelSpec.from_dict(ck.dense_spec)
            run.dense_history = list(ck.dense_history)
            run.dense_source = ck.dense_source
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
        self.opt = make_optimizer(self.cfg, self.model, lr)
        self.sched = None
        if self.finetuning:
            # The fine-tune's own schedule, over its epochs, without a warm-up (the weights
            # are trained already).
            schedule, warmup = self.cfg.compress.finetune_schedule, 0
            total = self.compression.finetune_epochs * self.steps
        else:
            schedule, warmup = t.schedule, t.warmup_steps
            total = self.dense_epochs * self.steps
        if schedule != "constant" or warmup:
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda s: lr_factor(s, total, warmup, schedule))
        self.scaler = torch.amp.GradScaler(self.env.device.type,
                                           enabled=self.precision == "fp16")

    # ---- dense training ----------------------------------------------------------------------

    def train_dense(self) -> None:
        """Dense epochs from the next one, until ``dense_epochs`` (which a validation plateau
        may lower)."""
        rung_sizes = self.cfg.search.scheduler == "mo_asha"
        while not self.finetuning and self.next_epoch < self.dense_epochs:
            epoch = self.next_epoch
            metrics = train_epoch(self, epoch, "train")
            if rung_sizes and self.env.rank == 0:
                # Early stopping ranks trials by size at its rungs: what they'd export now.
                metrics.update(self.compression.expected(unwrap(self.model),
                                                         self.artifact_meta(),
                                                         self.calibration()))
            self.dense_history.append(metrics)
            name, direction = self.plateau_metric
            score = metrics[name] if direction == "max" else -metrics[name]
            if self.plateau.update(score) and epoch + 1 < self.dense_epochs:
                # Every rank sees the same all-reduced metric: all stop together.
                log.info("%s has not improved for %d epochs: dense training ends after epoch "
                         "%d of %d", name, self.cfg.train.early_stop_patience, epoch,
                         self.cfg.train.epochs)
                self.dense_epochs = epoch + 1
            self._report_epoch(epoch, metrics)
        if self.keep_dense and self.dense_state is None:
            base = unwrap(self.model)
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
        self.model = wrap(net, self.env, self.channels_last)
        self.precision, self.dtype = dense.precision, DTYPES[dense.precision]
        self.dense_epochs = dense.dense_epochs
        self.dense_source = dense.source
        self._new_optimizer()
        at_rung = self.compression.expected(net, self.artifact_meta(), self.calibration()) \
            if self.cfg.search.scheduler == "mo_asha" else {}
        for metrics in dense.history:
            metrics = {**metrics, M.DENSE_FROM: dense.source, **at_rung}
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

    def begin_compression(self) -> None:
        """Dense training is over: fold BatchNorm (it has done its job: fine-tuning and the
        artifact use the folded convs), then let every compression method begin (pruning
        prunes here)."""
        base = fold_batch_norm(unwrap(self.model).cpu().eval()).train()
        base = base.cpu().to(memory_format=torch.contiguous_format)
        base = self.compression.begin(base, self.env.device)
        self.model = wrap(base, self.env, self.channels_last)
        self.finetuning = True
        self._new_optimizer()

    def compress(self) -> None:
        """The compression methods' start and the fine-tune epochs, if any method fine-tunes
        (a run resumed inside fine-tuning has begun already)."""
        if self.compression.fine_tunes:
            if not self.finetuning:
                self.begin_compression()
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
        child.cfg, child.compression = cfg, Compression(cfg.compress)
        child.report = lambda metrics, state, files=None: None
        torch.manual_seed(cfg.train.seed)
        net = build_model(self.dense_spec)
        net.load_state_dict(self.dense_state)
        child.model = wrap(net, self.env, self.channels_last)
        child.finetuning, child.ckpt = False, None
        child.next_epoch = self.dense_epochs
        child.last = dict(self.dense_last)
        child.keep_dense = False
        child.t_start, child.started_at = time.perf_counter(), time.time()
        child._new_optimizer()
        return child

    # ---- fine-tuning -------------------------------------------------------------------------

    def fine_tune(self) -> None:
        """Fine-tune epochs up to ``dense_epochs + finetune_epochs``, each begun by every
        compression method (gradual pruning raises sparsity here)."""
        while self.next_epoch < self.dense_epochs + self.compression.finetune_epochs:
            epoch = self.next_epoch
            if epoch > self.dense_epochs:
                self.compression.begin_epoch(unwrap(self.model), epoch - self.dense_epochs,
                                             self.env.device)
            self.compression.calibrate(unwrap(self.model), self.calibration())
            self._report_epoch(epoch, train_epoch(self, epoch, "finetune"))

    # ---- one epoch -----------------------------------------------------------------------------

    def _report_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.ckpt = None
        if self.env.rank == 0:
            base = unwrap(self.model)
            self.ckpt = Checkpoint(
                epoch=epoch, spec=base.spec.to_dict(), precision=self.precision,
                dense_epochs=self.dense_epochs, plateau=self.plateau.to_dict(),
                model={k: v.detach().cpu().contiguous() for k, v in base.state_dict().items()},
                optimizer=self.opt.state_dict(),
                scheduler=self.sched.state_dict() if self.sched else None,
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                # Children fork from the dense weights: a fine-tune checkpoint keeps them.
                dense_model=self.dense_state if self.finetuning else None,
                dense_spec=self.dense_spec.to_dict() if self.dense_spec else None,
                dense_history=self.dense_history, dense_source=self.dense_source,
                methods=self.compression.checkpoint()).to_dict()
        self.last = metrics
        self.next_epoch = epoch + 1
        self.report(metrics, self.ckpt)

    # ---- export and evaluation ---------------------------------------------------------------

    def calibration(self) -> torch.Tensor | None:
        """The inputs compression methods calibrate on (activation grids): the first
        :data:`CALIBRATION_SAMPLES` training inputs, normalized, not augmented; the same on
        every rank. None where no method calibrates."""
        if not self.compression.calibrates:
            return None
        return self.norm(self.x_all[:CALIBRATION_SAMPLES].to(self.env.device))

    def artifact_meta(self) -> dict[str, Any]:
        return {"input": self.norm.to_meta(), "config_name": self.cfg.name,
                "data_digest": self.splits.digest}

    def export(self) -> bytes:
        """The artifact of the final weights (BatchNorm folded, quantized, encoded)."""
        base = fold_batch_norm(unwrap(self.model).cpu()
                               .to(memory_format=torch.contiguous_format).eval())
        x = self.calibration()
        if x is not None:
            self.compression.calibrate(base, x.cpu())
        return self.compression.encode(base, self.artifact_meta())
