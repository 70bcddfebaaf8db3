"""Distillation's teacher for a search or a training: whether one is needed, its config, and
training it once (a Ray Train job) or reusing the one stored with the output."""

from __future__ import annotations

import logging
from pathlib import Path

from distopt import metrics as M
from distopt.config import Config
from distopt.orchestration.run import run_trial
from distopt.storage import Location

log = logging.getLogger(__name__)

__all__ = ["distills", "ensure_teacher", "teacher_config"]


def distills(cfg: Config) -> bool:
    """Whether a run of this config, or a trial of its search, learns from a teacher: the
    one place that decides whether a teacher is trained."""
    if cfg.trial_config().train.distill_alpha > 0:
        return True
    spec = cfg.search.space.get("train.distill_alpha", {})
    return any(v > 0 for v in spec.get("choices", [])) or spec.get("high", 0) > 0


def teacher_config(cfg: Config) -> Config:
    """The teacher: this config with ``train.teacher_overrides``, trained densely (no
    weight pruning, float32 weights, no distillation, no children, no early stopping)."""
    return cfg.with_overrides({
        **cfg.train.teacher_overrides, "train.teacher_overrides": {},
        "train.distill_alpha": 0.0, "train.teacher_path": None,
        "compress.prune": {}, "compress.quantize": {"bits": 32}, "compress.cluster": {},
        "search.children": 0, "search.scheduler": "fifo", "search.trial_overrides": {},
        "search.space": {},
        "name": f"{cfg.name}-teacher"[:100]})


def ensure_teacher(cfg: Config, output: Location, train_storage: str | Path) -> Config:
    """``cfg`` with ``train.teacher_path`` set, when it distills (:func:`distills`):
    the teacher stored at ``output`` (``teacher.dopt``) if there is one (a resumed search or
    training reuses it), else trained now, once, as a Ray Train job of
    :func:`teacher_config` (resumable under the name ``teacher``) and stored there.
    A config that names its own teacher, or does not distill, comes back unchanged."""
    if not distills(cfg) or cfg.train.teacher_path:
        return cfg
    if output.is_file(M.TEACHER_FILE):
        log.info("teacher: reusing %s", output.uri(M.TEACHER_FILE))
    else:
        teacher = teacher_config(cfg)
        log.info("teacher: training %s (%s, %d epochs) once, for every trial to learn from",
                 teacher.name, teacher.model.preset or teacher.model.family, teacher.train.epochs)
        # Quiet like the search's trials: the driver logs the teacher's result below.
        result = run_trial(teacher, train_storage, name="teacher", evaluate_test=False,
                           log_epochs=False)
        output.write_bytes(M.TEACHER_FILE, result.artifact)
        log.info("teacher: validation accuracy %.4f, %.0f s in its training loop",
                 result.metrics[M.VAL_ACCURACY], result.metrics[M.TRAIN_SECONDS])
    return cfg.with_overrides({"train.teacher_path": output.uri(M.TEACHER_FILE)})
