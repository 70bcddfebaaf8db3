"""One configuration, trained, compressed and evaluated: the phases of
:class:`~distopt.training.run.TrainingRun` in order, the children compressed from the same dense
weights, and a dense store's model adopted or stored. What a Ray Train worker or a Tune trial
actor calls (:mod:`distopt.orchestration.run`); nothing here imports Ray."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Sequence

from distopt import jsonio
from distopt import metrics as M
from distopt.config import Config
from distopt.data import Splits, load_splits
from distopt.training.dense_store import DenseStore, DenseWeights
from distopt.training.distributed import WorkerEnv, broadcast_object
from distopt.training.final import final_metrics
from distopt.training.run import Reporter, TrainingRun

log = logging.getLogger(__name__)

__all__ = ["child_file", "fit"]


def fit(cfg: Config, env: WorkerEnv, report: Reporter, state: dict[str, Any] | None = None,
        evaluate_test: bool = False, splits: Splits | None = None,
        children: Sequence[tuple[dict[str, Any], Config]] = (),
        dense_store: DenseStore | None = None) -> dict[str, Any]:
    """Train, weight-prune, fine-tune, export and evaluate one configuration: the phases of
    :class:`TrainingRun`, in order, each resuming where ``state`` (a checkpoint) left off.

    ``children`` (``(values, config)`` pairs: :func:`distopt.orchestration.children.child_configs`) are compressed
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
    final = final_metrics(run, artifact, evaluate_test)
    files = {M.ARTIFACT_FILE: artifact}
    records: list[dict[str, Any]] = []
    if children and run.dense_state is None:
        log.warning("resumed from a checkpoint without the dense weights: no children")
    elif children:
        for i, (values, child_cfg) in enumerate(children):
            child = run.fork(child_cfg)
            child.compress()
            child_artifact = child.export()
            metrics = final_metrics(child, child_artifact, evaluate_test)
            files[child_file(i)] = child_artifact
            records.append({"params": values, "file": child_file(i), "metrics": {
                k: v for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "started_at"}})
        final[M.CHILDREN] = json.dumps(records, default=float)
        final[M.TRAIN_SECONDS] = time.perf_counter() - run.t_start
    # The final checkpoint holds the metrics too: a report of a search that has not finished
    # reads them there (Tune's own records of them may not have been saved yet).
    files[M.METRICS_FILE] = jsonio.dumps(final).encode()
    report(final, run.ckpt, files if env.rank == 0 else None)
    return {"metrics": final, "artifact": artifact, "children": records}


def _stored_dense(store: DenseStore | None, cfg: Config, env: WorkerEnv) -> DenseWeights | None:
    """The store's dense model for ``cfg``, as rank 0 finds it, on every rank (ranks may not
    share a filesystem, and must all decide alike)."""
    if store is None:
        return None
    return broadcast_object(store.load(cfg) if env.rank == 0 else None, env)  # type: ignore[return-value]


def child_file(i: int) -> str:
    """The artifact file of a trial's i-th child, beside its ``model.dopt``."""
    return M.CHILD_ARTIFACT.format(index=i)

