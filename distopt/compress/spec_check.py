"""Checks of a file's model spec before anything is built: a crafted spec must never make the
decoder allocate memory, so every reader validates the spec against these rules first, then
learns the parameter names and shapes the spec's model has from a build on the meta device."""

from __future__ import annotations

from typing import Any

import torch

from distopt.compress.wrapper import MAX_DIM, MAX_LAYERS
from distopt.models import BLOCKS, GATES, ModelSpec, build_model, conv_out_side, prunable_weights

__all__ = ["expected_state", "spec_problem"]


def spec_problem(d: Any) -> str | None:
    """Why a header's spec cannot be a model this decoder builds, or None. Runs before anything
    is built, so that a crafted spec never allocates memory."""
    if not isinstance(d, dict):
        return "spec is not an object"
    for key, allowed, default in (("family", ("cnn", "conv1d", "mlp", "rnn"), None),
                                  ("cell", tuple(GATES), "rnn"),
                                  ("head", ("flatten", "gap"), "flatten"),
                                  ("block", BLOCKS, "plain")):
        v = d.get(key, default)
        if not isinstance(v, str) or v not in allowed:
            name = {"family": "model family", "cell": "recurrent cell", "head": "head",
                    "block": "conv block"}[key]
            return f"unknown {name} {v!r}"
    if d.get("batch_norm", False) is not False:
        return "spec.batch_norm must be false (BatchNorm is folded before export)"
    missing = [k for k in ("in_shape", "num_classes", "conv_channels", "dense_units",
                           "kernel_size", "dropout") if k not in d]
    if missing:
        return f"spec lacks {missing}"
    lists = {k: d.get(k, []) for k in ("in_shape", "conv_channels", "dense_units", "rnn_units")}
    for key, v in lists.items():
        if not isinstance(v, list) or len(v) > MAX_LAYERS or \
                not all(type(x) is int and 1 <= x <= MAX_DIM for x in v):
            return f"spec.{key} must be a list of at most {MAX_LAYERS} integers in [1, {MAX_DIM}]"
    for key in ("num_classes", "kernel_size"):
        if not (type(d.get(key)) is int and 1 <= d[key] <= MAX_DIM):
            return f"spec.{key} must be an integer in [1, {MAX_DIM}]"
    for key in ("vocab_size", "embed_dim"):
        if not (type(d.get(key, 0)) is int and 0 <= d.get(key, 0) <= 1 << 24):
            return f"spec.{key} must be an integer in [0, {1 << 24}]"
    if not (isinstance(d.get("dropout"), (int, float)) and 0 <= d["dropout"] < 1):
        return "spec.dropout must be in [0, 1)"
    tokens = d.get("vocab_size", 0) > 0
    if len(lists["in_shape"]) != (1 if d["family"] == "rnn" and tokens else 3):
        return f"spec.in_shape {lists['in_shape']} does not fit family {d['family']!r}"
    if tokens and not d.get("embed_dim"):
        return "spec.embed_dim must be >= 1 with a vocabulary"
    if d["family"] == "conv1d" and lists["in_shape"][1] != 1:
        return f"spec.in_shape {lists['in_shape']}: a conv1d model takes (C, 1, L)"
    if d["family"] in ("cnn", "conv1d") and lists["conv_channels"]:
        h, w = lists["in_shape"][1:]
        kh = 1 if d["family"] == "conv1d" else d["kernel_size"]
        ph = 1 if d["family"] == "conv1d" else 2
        h, w = conv_out_side(h, w, len(lists["conv_channels"]), (kh, d["kernel_size"]), (ph, 2),
                             d.get("block", "plain"))
        if min(h, w) < 1:
            return "spec's convolutions shrink the input to nothing"
    if d["family"] == "rnn" and not lists["rnn_units"]:
        return "spec.rnn_units is empty"
    return None


def expected_state(spec: ModelSpec) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Parameter names and shapes of the spec's model, and its quantizable weights with their
    axes, from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(spec)
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()},
            {n: axis for n, _, axis in prunable_weights(model)})
