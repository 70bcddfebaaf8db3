"""How many trials a cluster holds, judged before the search starts: its node types (from the
autoscaler's config on a ``ray up`` head, the autoscaler's state, or the nodes Ray sees), how
many of a trial's workers fit a node, and whether one trial fits at all (a trial that never
fits would wait for its placement group forever)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distopt.config import Config
from distopt.orchestration.run import worker_resources  # the shape Ray Train is asked for

log = logging.getLogger(__name__)

__all__ = ["NodeType", "check_fits", "cluster_node_types", "concurrency",
           "default_max_concurrent", "node_types_from_cluster_config", "worker_capacity",
           "workers_per_node"]


@dataclass(frozen=True)
class NodeType:
    """Nodes of one shape: ``count`` of them with ``cpus`` and ``gpus`` each. For an
    autoscaling cluster ``count`` is how many the autoscaler may run; for a fixed one, the
    nodes alive now."""

    name: str
    cpus: float
    gpus: float
    count: int


UNBOUNDED_NODES = 1_000  # a node group without a maximum


def node_types_from_cluster_config(raw: dict[str, Any]) -> list[NodeType]:
    """Node types of a Ray cluster-launcher YAML (as loaded): each type's ``resources`` and
    ``max_workers`` (the head: one node), capped by the top-level ``max_workers``."""
    cap = int(raw.get("max_workers", UNBOUNDED_NODES))
    head = raw.get("head_node_type")
    out = []
    for name, nt in (raw.get("available_node_types") or {}).items():
        res = nt.get("resources") or {}
        count = 1 if name == head else min(int(nt.get("max_workers", cap)), cap)
        out.append(NodeType(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), count))
    return out


def _autoscaler_node_types() -> list[NodeType] | None:
    """The node groups the running autoscaler may launch (as it reported them to the GCS), or
    None when the cluster has no autoscaler or Ray's private API is not there."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API; any failure means "don't know"
        return None
    if config is None or not config.node_group_configs:
        return None
    return [NodeType(g.name, float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)),
                     UNBOUNDED_NODES if g.max_count < 0 else int(g.max_count))
            for g in config.node_group_configs]


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the autoscaler's config on a `ray up` head


def _bootstrap_node_types() -> list[NodeType] | None:
    """Node types of the cluster-launcher config that `ray up` leaves on the head node (where
    `ray submit` runs the driver), or None."""
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return None
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
        types = node_types_from_cluster_config(raw)
    except (yaml.YAMLError, TypeError, ValueError, AttributeError) as e:
        log.warning("%s: cannot read the cluster's node types (%s); judging the nodes alive",
                    path, e)
        return None
    unknown = [name for name, nt in (raw.get("available_node_types") or {}).items()
               if "CPU" not in (nt.get("resources") or {})]
    if unknown:  # e.g. the local provider: Ray detects each node's resources when it starts
        log.debug("%s: node types %s do not state their resources; judging the nodes alive",
                  path, unknown)
        return None
    return types or None


def cluster_node_types() -> tuple[list[NodeType], str]:
    """What the cluster can grow to (the node groups the autoscaler reported to Ray, or the
    head's `ray up` config) or, without an autoscaler, the nodes alive now; with a phrase
    saying which."""
    import ray

    groups = _autoscaler_node_types()
    if groups:
        return groups, "the autoscaler's node types"
    groups = _bootstrap_node_types()
    if groups:
        return groups, f"the node types in {BOOTSTRAP_CONFIG}"
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return [NodeType(f"node{i}", float(r.get("CPU", 0)), float(r.get("GPU", 0)), 1)
            for i, r in enumerate(nodes)], "the nodes alive now"


def workers_per_node(node: NodeType, cfg: Config) -> int:
    """Ray Train workers of this config one node of this type holds (each worker's CPUs and
    GPU share on one node: resources of different nodes never add up to a worker)."""

    have = {"CPU": node.cpus, "GPU": node.gpus}
    # Divide, then floor with a tolerance: 1.0 // 0.1 is 9.0 in floating point, not 10.
    return min(int(have[k] / need + 1e-9) for k, need in worker_resources(cfg).items())


def worker_capacity(types: list[NodeType], cfg: Config) -> int:
    return sum(workers_per_node(nt, cfg) * nt.count for nt in types)


def default_max_concurrent(cfg: Config, types: list[NodeType] | None = None) -> int:
    """Trials that fit at once: whole worker groups on the cluster the autoscaler can grow to
    (so that it is asked for more nodes), or on the nodes alive now."""
    types = types if types is not None else cluster_node_types()[0]
    trial = cfg.trial_config()
    return max(1, worker_capacity(types, trial) // trial.train.num_workers)


def check_fits(cfg: Config, types: list[NodeType] | None = None, source: str = "") -> list[str]:
    """Problems with a per-trial shape the cluster can never place, judged node by node on what
    the autoscaler can launch (or, without one, on the nodes alive): fail fast instead of
    waiting forever for a placement group."""
    if types is None:
        types, source = cluster_node_types()
    trial = cfg.trial_config()
    t = trial.train
    shape = f"{t.cpus_per_worker:g} CPU" + (f" + {t.gpus_per_worker:g} GPU" if t.use_gpu else "")
    seen = ", ".join(f"{nt.name}: {nt.cpus:g} CPU {nt.gpus:g} GPU x{nt.count}" for nt in types)
    where = f" ({source}: {seen})" if source else f" ({seen})"
    if not any(workers_per_node(nt, trial) for nt in types):
        return [f"train.cpus_per_worker/gpus_per_worker: a worker needs {shape} on one node, "
                f"and no node type has that{where}"]
    capacity = worker_capacity(types, trial)
    if capacity < t.num_workers:
        return [f"train.num_workers: got {t.num_workers} workers of {shape}; the cluster can "
                f"hold at most {capacity}{where}"]
    return []


def concurrency(cfg: Config) -> tuple[int, str]:
    """Trials at once, and why: ``search.max_concurrent``, else what the cluster holds."""
    if cfg.search.max_concurrent:
        return cfg.search.max_concurrent, "search.max_concurrent"
    types, source = cluster_node_types()
    return default_max_concurrent(cfg, types), f"judged on {source}"
