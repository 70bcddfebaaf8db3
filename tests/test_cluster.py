"""The shipped Ray cluster-launcher file, validated offline by Ray's own schema."""

from __future__ import annotations

import copy

import yaml

from conftest import ROOT


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials never land on the head
    assert "--dashboard-host=127.0.0.1" in " ".join(raw["head_start_ray_commands"])
    assert any("pip install" in c and "distopt" in c for c in raw["setup_commands"])
