"""One trial as a Ray Train job (``TorchTrainer`` workers run :func:`distopt.training.fit`), or
inside its own Tune trial actor (:func:`train_in_trial_actor`, one CPU worker).

Also the single-process path (:func:`fit_local`), used by benchmarks to compare the same loop
with and without Ray Train.
"""

from __future__ import annotations

import math

import json
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from distopt import jsonio
from distopt import metrics as M
from distopt.config import Config, ConfigError
from distopt.training.dense_store import DenseStore
from distopt.storage import is_uri
from distopt.orchestration.children import child_configs
from distopt.orchestration.telemetry import record_trial
from distopt.training import WorkerEnv, fit

log = logging.getLogger(__name__)

__all__ = ["TrialResult", "ensure_ray", "fit_local", "ignore_exit_in_finalizers", "make_trainer",
           "run_trial",
           "train_in_trial_actor", "train_loop_per_worker", "worker_resources"]

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"  # fit_local's checkpoint: the epochs so far
ARTIFACT_FILE = M.ARTIFACT_FILE


@dataclass(frozen=True)
class TrialResult:
    metrics: dict[str, Any]
    artifact: bytes
    history: list[dict[str, Any]]


# What Ray itself would print on every search that says nothing to a distopt user, switched off
# by Ray's own settings (``-v`` leaves all of them on). Set before the local instance starts, so
# that its processes inherit them.
QUIET_RAY_ENV = {
    # Tune's legacy console output, which at verbose=0 prints nothing (the new one prints an
    # experiment box and a TensorBoard hint even then): distopt's ProgressTable is the progress.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Each epoch checkpoint of a trial actor forces an experiment snapshot (num_to_keep is
    # set), and Tune warns when snapshots come faster than every 5 s; the message names this
    # variable as the way to switch the warning off.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
# On a local instance only (nothing there can be preempted): Ray Train's PreemptionWatcher actor
# is created with restarts and its arguments in the object store, and every Ray Train run then
# logs an `E core_worker.cc` line about it.
LOCAL_ONLY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# Ray Train's run-state export (on while RAY_TRAIN_ENABLE_STATE_TRACKING=1, which lists runs in
# the dashboard) reads a deprecated Ray Data option and warns in the controller, once per run.
QUIET_WARNINGS = "ignore:`ExecutionOptions.exclude_resources` is deprecated"


def ensure_ray(verbose: bool = False, **init_kwargs: Any) -> None:
    """Join the cluster named by ``RAY_ADDRESS``, or start a local Ray instance if it is unset
    (or ``local``: a new instance even where ``ray start`` runs one).

    Unless ``verbose``, Ray's own console output is reduced to its warnings that matter: see
    :data:`QUIET_RAY_ENV`."""
    import ray

    # The Train controller polls its workers every 2 s by default, so every short trial waits
    # up to 2 s to notice its workers finished. Processes of a local instance inherit this.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if ray.is_initialized():
        return
    if not verbose:
        local = os.environ.get("RAY_ADDRESS", "") in ("", "local") and \
            init_kwargs.get("address", "local") == "local"
        for key, value in {**QUIET_RAY_ENV, **(LOCAL_ONLY_ENV if local else {})}.items():
            os.environ.setdefault(key, value)
        warnings = os.environ.get("PYTHONWARNINGS")
        if QUIET_WARNINGS not in (warnings or ""):
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [warnings, QUIET_WARNINGS]))
        if not local:  # a cluster's processes do not inherit this process's environment
            env_vars = {k: os.environ[k] for k in (*QUIET_RAY_ENV, "PYTHONWARNINGS")}
            runtime_env = dict(init_kwargs.pop("runtime_env", None) or {})
            runtime_env["env_vars"] = {**env_vars, **runtime_env.get("env_vars", {})}
            init_kwargs["runtime_env"] = runtime_env
        # Token authentication being on is Ray's default for a local instance, not news.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    # Keep Ray's own chatter (worker start-up, deprecation notices) off the user's console.
    init_kwargs.setdefault("logging_level", logging.INFO if verbose else logging.WARNING)
    init_kwargs.setdefault("configure_logging", True)
    address = str(init_kwargs.get("address") or os.environ.get("RAY_ADDRESS") or "")
    check_reachable(address)
    try:
        ray.init(**init_kwargs)
    except ConnectionError as e:  # address "auto" with no cluster on this machine, ...
        raise ConfigError([f"RAY_ADDRESS={address or 'auto'}: {str(e).splitlines()[0]}; start "
                           "the cluster (ray start --head, ray up) or unset RAY_ADDRESS to "
                           "run on this machine"], "environment") from None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address (``host:port`` or ``ray://host:port``) must answer a TCP connection:
    Ray itself retries a dead GCS address for minutes, printing "Failed to connect to GCS"."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not port.isdigit():  # "auto", "local", "": Ray finds (or starts) the instance itself
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError([f"RAY_ADDRESS={address}: no Ray cluster answers there "
                           f"({e.strerror or type(e).__name__}); start it (ray start --head, "
                           "ray up) or unset RAY_ADDRESS to run on this machine"],
                          "environment") from None


def trains_in_actor(cfg: Config) -> bool:
    """Whether a search trial of this config trains inside its own Tune trial actor rather
    than as a Ray Train job: the one place ``train.executor: auto`` is decided."""
    t = cfg.train
    if t.executor == "auto":
        return t.num_workers == 1 and not t.use_gpu
    return t.executor == "trial_actor"


def worker_resources(cfg: Config) -> dict[str, float]:
    """What one Ray Train worker of this config holds: its CPUs, and its GPU share if any."""
    t = cfg.train
    return {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}


def save_state(state: dict[str, Any], files: dict[str, bytes] | None, directory: Path) -> None:
    torch.save(state, directory / STATE_FILE)
    for name, data in (files or {}).items():
        (directory / name).write_bytes(data)


def load_state(directory: Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code to execute.
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)


def _restored_state(checkpoint: Any) -> dict[str, Any] | None:
    """The training state in a Ray (Train or Tune) checkpoint, or None without one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        state = load_state(Path(d))
    log.info("resuming from the checkpoint of epoch %d", state["epoch"])
    return state


def _report_with_state(send: Any, checkpoint_cls: Any, metrics: dict[str, Any],
                       state: dict[str, Any] | None, files: dict[str, bytes] | None) -> None:
    """``send(metrics, checkpoint=...)`` (``ray.train.report`` or ``ray.tune.report``), with
    the state and files as a checkpoint directory when there is a state."""
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if state is not None:
            save_state(state, files, Path(d))
            ckpt = checkpoint_cls.from_directory(d)
        send(metrics, checkpoint=ckpt)


def _worker_logging(rank: int, progress: bool = True) -> None:
    """Progress lines from rank 0 only (none in searches); others log warnings and errors."""
    logger = logging.getLogger("distopt")
    if not logger.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    logger.setLevel(logging.INFO if rank == 0 and progress else logging.WARNING)
    logger.propagate = False
    # Ray Train's worker context logs every report at INFO under a logger named by its file
    # path, which LoggingConfig does not reach: one line per epoch (ours) is enough.
    for name in list(logging.root.manager.loggerDict):
        if "ray/train" in name or "ray\\train" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def format_epoch(m: dict[str, Any]) -> str:
    auc = m.get(M.VAL_AUC, math.nan)  # binary labels: the ranking quality too
    return (f"epoch {m[M.EPOCH]:>3} {m[M.PHASE]:<8} loss {m[M.TRAIN_LOSS]:.4f} "
            f"train {m[M.TRAIN_ACCURACY]:.4f} val {m[M.VAL_ACCURACY]:.4f} "
            + (f"auc {auc:.4f} " if not math.isnan(auc) else "")
            + f"gap {m[M.GAP]:+.4f} {m[M.SAMPLES_PER_S]:,.0f} samples/s")


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """The function every Ray Train worker runs: rank, device and checkpoints from Ray."""
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    _worker_logging(rank, loop_config.get("log_epochs", True))
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    env = WorkerEnv(rank=rank, world_size=ctx.get_world_size(), device=device)

    state = _restored_state(ray.train.get_checkpoint())

    history: list[dict[str, Any]] = []

    run_name = ctx.get_experiment_name()

    def report(metrics: dict[str, Any], st: dict[str, Any] | None,
               files: dict[str, bytes] | None = None) -> None:
        if metrics.get("phase") != "final":
            history.append(metrics)
            if rank == 0:
                log.info(format_epoch(metrics))
        if rank == 0:  # metrics are all-reduced already: one exporter per trial
            record_trial(cfg.name, run_name, metrics)
        _report_with_state(ray.train.report, ray.train.Checkpoint, metrics, st, files)

    children = child_configs(cfg) if loop_config.get("children") else []
    store = DenseStore(loop_config["dense_store"], run_name) \
        if loop_config.get("dense_store") else None
    out = fit(cfg, env, report, state, evaluate_test=loop_config.get("evaluate_test", False),
              children=children, dense_store=store)
    if rank != 0:
        return None
    return {"metrics": out["metrics"], "artifact": out["artifact"], "history": history}


def ignore_exit_in_finalizers() -> None:
    """When Ray ends a finished trial actor with SIGTERM, Ray's handler raises ``SystemExit``
    wherever the interpreter is, and if that is a finalizer (a weakref callback during garbage
    collection) Python prints it as an ignored exception with a traceback. The process is
    exiting as asked either way: drop that one report, keep every other."""
    previous = sys.unraisablehook
    if getattr(previous, "_distopt", False):  # a reused actor: installed by an earlier trial
        return

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook._distopt = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def train_in_trial_actor(cfg: Config, dense_store: str | None = None) -> None:
    """Run one search trial's training loop in the calling Tune trial actor.

    The actor holds the one worker's CPUs, so there is no worker group to start or tear down
    (Ray Train's costs ~12 s per trial here; this ~0.1 s). Epochs are checkpointed through Tune
    (``ray.tune.report``), and a trial restarted by Tune (``train.max_failures``: a killed
    actor, a resumed search) continues from its last epoch checkpoint. ``dense_store``: the
    search's store of dense models (:class:`~distopt.dense_store.DenseStore`), if it reuses
    them."""
    import ray.tune

    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    ignore_exit_in_finalizers()
    _worker_logging(0, progress=False)
    # Tune's storage logs every persisted checkpoint at INFO: one line per epoch per trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    state = _restored_state(ray.tune.get_checkpoint())
    trial_id = ray.tune.get_context().get_trial_id()

    def report(metrics: dict[str, Any], st: dict[str, Any] | None,
               files: dict[str, bytes] | None = None) -> None:
        record_trial(cfg.name, trial_id, metrics)
        _report_with_state(ray.tune.report, ray.tune.Checkpoint, metrics, st, files)

    fit(cfg, WorkerEnv(), report, state, evaluate_test=False, children=child_configs(cfg),
        dense_store=DenseStore(dense_store, trial_id) if dense_store else None)


def make_trainer(cfg: Config, storage_path: str | Path, name: str, *, evaluate_test: bool,
                 log_epochs: bool = True, callbacks: Sequence[Any] = (),
                 children: bool = False, dense_store: str | None = None) -> Any:
    """The ``TorchTrainer`` of one configuration: the workers hold the CPUs (and GPUs), every
    epoch is checkpointed, and ``train.max_failures`` worker-group restarts resume from the last
    checkpoint. Re-running one with the same ``storage_path`` and ``name`` resumes it too.
    ``children``: a search trial's, which forks ``search.children`` compressions;
    ``dense_store``: the search's store of dense models, if it reuses them."""
    from ray.train import (CheckpointConfig, FailureConfig, LoggingConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchTrainer

    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "evaluate_test": evaluate_test,
                           "log_epochs": log_epochs, "children": children,
                           "dense_store": dense_store},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=worker_resources(cfg)),
        run_config=RunConfig(
            name=name, storage_path=(str(storage_path) if is_uri(str(storage_path))
                                     else str(Path(storage_path).resolve())),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=list(callbacks),
            # Ray Train logs every report at INFO; our one line per epoch is enough.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def run_trial(cfg: Config, storage_path: str | Path, name: str = "train",
              evaluate_test: bool = True, log_epochs: bool = True) -> TrialResult:
    """Run one configuration as a Ray Train job and return its final metrics and artifact.

    Re-running with the same ``storage_path`` and ``name`` resumes from the last epoch
    checkpoint (Ray Train's behaviour), so callers pick a fresh name for a fresh run."""
    ensure_ray()
    result = make_trainer(cfg, storage_path, name, evaluate_test=evaluate_test,
                          log_epochs=log_epochs).fit()
    if result.error is not None:
        raise result.error
    out = result.return_value
    assert out is not None, "rank 0 returned nothing"
    return TrialResult(out["metrics"], out["artifact"], out["history"])


def fit_local(cfg: Config, evaluate_test: bool = True, directory: Path | None = None
              ) -> TrialResult:
    """The same loop in this process, without Ray: one worker, as a search trial trains in its
    trial actor (``distopt train`` with one CPU worker; benchmarks). With ``directory`` every
    epoch is checkpointed there (the state and the history so far, each file replaced
    whole), and a call with the same directory resumes from the last one."""
    history: list[dict[str, Any]] = []
    state = None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / STATE_FILE).exists():
            state = load_state(directory)
            history = json.loads((directory / HISTORY_FILE).read_text())
            log.info("resuming from the checkpoint of epoch %d", state["epoch"])

    def report(metrics: dict[str, Any], st: dict[str, Any] | None,
               files: dict[str, bytes] | None = None) -> None:
        if metrics.get("phase") != "final":
            history.append(metrics)
            log.info(format_epoch(metrics))
        if directory is not None and st is not None:
            with tempfile.TemporaryDirectory(dir=directory) as d:
                save_state(st, None, Path(d))
                (Path(d) / HISTORY_FILE).write_text(jsonio.dumps(history))
                for name in (HISTORY_FILE, STATE_FILE):  # the state last: it marks the epoch
                    os.replace(Path(d) / name, directory / name)

    device = torch.device("cuda") if cfg.train.use_gpu and torch.cuda.is_available() else \
        torch.device("cpu")
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    out = fit(cfg, WorkerEnv(device=device), report, state, evaluate_test=evaluate_test)
    return TrialResult(out["metrics"], out["artifact"], history)
