"""Training one configuration: the per-worker loop as named phases
(:mod:`~distopt.training.run`), composed by :func:`~distopt.training.fit.fit`, with its
precision, distributed collectives, inputs, evaluation, distillation, compression steps and
dense store in their own modules. Plain PyTorch: nothing here imports Ray."""

from distopt.training.distributed import WorkerEnv
from distopt.training.evaluation import evaluate_artifact
from distopt.training.fit import fit
from distopt.training.precision import resolve_precision
from distopt.training.run import Reporter, TrainingDiverged

__all__ = ["Reporter", "TrainingDiverged", "WorkerEnv", "evaluate_artifact", "fit",
           "resolve_precision"]
