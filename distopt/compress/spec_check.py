"""Checks of a file's model spec before anything is built: a crafted spec must never make the
decoder allocate memory, so every reader validates the spec against these rules first, then
learns the parameter names and shapes the spec's model has from a build on the meta device."""

from __future__ import annotations

from typing import Any

import torch

from distopt.compress.wrapper import MAX_DIM, MAX_LAYERS, ArtifactError
from distopt.models import GATES, ModelSpec, build_model, prunable_weights
from distopt.shapes import BLOCKS, conv_out_side
from distopt.user_models import is_factory_path, trust, trusted

__all__ = ["check_trust", "expected_state", "spec_problem"]


def spec_problem(d: Any) -> str | None:
    """Why a header's spec cannot be a model this decoder builds, or None. Runs before anything
    is built, so that a crafted spec never allocates memory."""
    if not isinstance(d, dict):
        return "spec is not an object"
    if d.get("family") == "external":
        return _external_problem(d)
    for key, allowed, default in (("family", ("cnn", "conv1d", "mlp", "rnn", "recsys"), None),
                                  ("interaction", ("mlp", "dot"), "mlp"),
                                  ("cell", tuple(GATES), "rnn"),
                                  ("head", ("flatten", "gap"), "flatten"),
                                  ("block", BLOCKS, "plain")):
        v = d.get(key, default)
        if not isinstance(v, str) or v not in allowed:
            name = {"family": "model family", "cell": "recurrent cell", "head": "head",
                    "block": "conv block", "interaction": "interaction"}[key]
            return f"unknown {name} {v!r}"
    if not isinstance(d.get("bias", True), bool):
        return "spec.bias must be true or false"
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
    if d["family"] == "recsys":
        return _recsys_problem(d, lists)
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
        if d.get("block") in ("depthwise", "bitnet") and len(set(lists["conv_channels"])) > 1:
            return "spec.conv_channels must all be equal with depthwise blocks"
    if d["family"] == "rnn" and not lists["rnn_units"]:
        return "spec.rnn_units is empty"
    return None


def _recsys_problem(d: dict[str, Any], lists: dict[str, Any]) -> str | None:
    """A recsys spec: one row of columns, a table of at least 2 rows per id column (at most
    as many tables as columns), an embedding dimension."""
    if len(lists["in_shape"]) != 1:
        return f"spec.in_shape {lists['in_shape']} does not fit family 'recsys'"
    b = d.get("buckets")
    if not isinstance(b, list) or not b or len(b) > lists["in_shape"][0] or \
            not all(type(x) is int and 2 <= x <= 1 << 24 for x in b):
        return (f"spec.buckets must list one table size in [2, {1 << 24}] per id column, at "
                "most one per column")
    if not d.get("embed_dim"):
        return "spec.embed_dim must be >= 1 for family 'recsys'"
    return None


def _external_problem(d: dict[str, Any]) -> str | None:
    """A user's model (:mod:`distopt.user_models`): its factory path, input shape, classes and
    options; what it builds is checked on the meta device like any spec's."""
    if not is_factory_path(d.get("factory")):
        return f"spec.factory {d.get('factory')!r} is not 'package.module:Name'"
    shape = d.get("in_shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 3 or \
            not all(type(x) is int and 1 <= x <= MAX_DIM for x in shape):
        return f"spec.in_shape must be a list of 1 to 3 integers in [1, {MAX_DIM}]"
    if not (type(d.get("num_classes")) is int and 1 <= d["num_classes"] <= MAX_DIM):
        return f"spec.num_classes must be an integer in [1, {MAX_DIM}]"
    options = d.get("options", [])
    if not isinstance(options, list) or len(options) > MAX_LAYERS or not all(
            isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) and
            (o[1] is None or isinstance(o[1], (bool, int, float, str))) for o in options):
        return "spec.options must be a list of [name, scalar] pairs"
    for key in ("vocab_size", "embed_dim"):
        if not (type(d.get(key, 0)) is int and 0 <= d.get(key, 0) <= 1 << 24):
            return f"spec.{key} must be an integer in [0, {1 << 24}]"
    return None


def check_trust(d: dict[str, Any], source: str, trust_code: bool) -> None:
    """Refuse to build a user's model whose factory nobody trusted in this process (decoding
    would import and run its code); with ``trust_code``, trust it."""
    if d.get("family") != "external":
        return
    path = str(d.get("factory"))
    if trust_code:
        trust(path)
    elif not trusted(path):
        raise ArtifactError(f"{source}: the model is built by user code {path!r}; decoding it "
                            "imports and runs that code: pass trust_code=True (CLI: "
                            "--trust-code) if you trust the file's source")


def expected_state(spec: ModelSpec) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Parameter names and shapes of the spec's model, and its quantizable weights with their
    axes, from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        try:
            model = build_model(spec)
        except Exception as e:  # a user's factory: whatever it raises, the file is refused
            if spec.family != "external":
                raise
            raise ArtifactError(f"{spec.factory} cannot build the file's model: "
                                f"{type(e).__name__}: {e}") from None
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()},
            {n: axis for n, _, axis in prunable_weights(model)})
