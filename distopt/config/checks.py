"""The rules that span keys (data and model agree, compression settings fit together, the
search's objectives exist, ...), each stated with every key and value it involves."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from distopt import metrics
from distopt.constraints import problems as constraint_problems
from distopt.config.secrets import ENV_REF, REDACTED, redact_url
from distopt.config.sections import SIGNALS_CLASSES, SIGNALS_SHAPE
from distopt.shapes import conv_out_side
from distopt.user_models import is_factory_path, load_factory, trust

if TYPE_CHECKING:
    from distopt.config.core import Config

__all__ = ["INTEGER_FAMILIES", "cross_checks", "trial_epochs"]

INTEGER_FAMILIES = ("cnn", "conv1d", "mlp")  # the families integer kernels compute


def cross_checks(cfg: Config, problems: list[str], check_paths: bool) -> None:
    """Rules between fields. Each runs only if the fields it reads passed their own rules, so
    that one bad value yields one problem, while every other problem is still reported."""
    bad = {p.split(":", 1)[0].split("[", 1)[0] for p in problems}

    def ok(*keys: str) -> bool:
        return not any(k == b or k.startswith(b + ".") or b.startswith(k + ".") for k in keys
                       for b in bad)

    d, m = cfg.data, cfg.model
    if ok("data.name", "data.path") and d.name == "parquet" and not d.path:
        problems.append("data.path: got None; data.name 'parquet' needs the training file(s)")
    if ok("data.name", "data.path", "data.mirrors") and d.name == "mnist" and d.path is None \
            and not d.mirrors:
        problems.append("data.mirrors: got []; data.name 'mnist' without data.path needs at "
                        "least one mirror URL")
    for p in (d.path, d.test_path) if check_paths and ok("data.path", "data.test_path") else ():
        if p and not any(ch in p for ch in "*?[") and "://" not in p and \
                not Path(p).expanduser().exists():
            problems.append(f"data: path {p!r} does not exist")
    if ok("data.name", "data.kind") and d.name == "tokens-mini" and d.kind != "tokens":
        problems.append(f"data.kind: got {d.kind!r}; data.name 'tokens-mini' is 'tokens'")
    if ok("data.name", "data.kind") and d.name in ("mnist", "mnist-mini", "signals-mini") and \
            d.kind != "image":
        problems.append(f"data.kind: got {d.kind!r}; data.name {d.name!r} is 'image'")
    _check_tabular(cfg, problems, ok)
    external = ok("model.family") and is_factory_path(m.family)
    if external:
        _check_external_family(cfg, problems, ok, import_it=check_paths)
    if ok("data.kind", "model.family") and d.kind == "tokens" and m.family != "rnn" and \
            not external:
        problems.append(f"model.family: got {m.family!r}; token sequences need 'rnn'")
    a = cfg.augment
    image_aug = {k: v for k, v in (("rotation", a.rotation), ("shift", a.shift),
                                   ("shear", a.shear), ("zoom", a.zoom)) if v}
    token_aug = {k: v for k, v in (("token_dropout", a.token_dropout), ("crop", a.crop)) if v}
    if ok("data.kind", "augment") and d.kind == "tokens" and image_aug:
        problems.append(f"augment: got {image_aug}; image augmentation needs data.kind 'image'")
    if ok("data.kind", "augment.prob") and d.kind == "tokens" and a.prob != 1:
        problems.append(f"augment.prob: got {a.prob}; it is the chance of an image or signal "
                        "transform (token augmentation acts on each token: set "
                        "augment.token_dropout, augment.crop)")
    if ok("data.kind", "augment") and d.kind == "image" and token_aug:
        problems.append(f"augment: got {token_aug}; token augmentation needs data.kind 'tokens'")
    if ok("data.name", "data.shape", "data.num_classes") and \
            d.name in ("mnist", "mnist-mini") and (tuple(d.shape) != (1, 28, 28)
                                              or d.num_classes != 10):
        problems.append(f"data.shape/num_classes: got {list(d.shape)}/{d.num_classes}; "
                        f"{d.name} is (1, 28, 28) with 10 classes")
    if ok("data.name", "data.shape", "data.num_classes") and d.name == "signals-mini" and \
            (tuple(d.shape) != SIGNALS_SHAPE or d.num_classes != SIGNALS_CLASSES):
        problems.append(f"data.shape/num_classes: got {list(d.shape)}/{d.num_classes}; "
                        f"signals-mini is {SIGNALS_SHAPE} with {SIGNALS_CLASSES} classes")
    if ok("data.resize", "data.kind", "model.family") and d.resize and \
            (d.kind != "image" or m.family == "conv1d"):
        problems.append(f"data.resize: got {d.resize} with data.kind {d.kind!r}, model.family "
                        f"{m.family!r}; resizing is for 2-D images")
    if ok("model.family", "data.shape") and m.family == "conv1d" and d.shape[1] != 1:
        problems.append(f"data.shape: got {list(d.shape)} with model.family 'conv1d'; 1-D "
                        "signals are [channels, 1, length]")
    if ok("model.family", "model.blocks", "model.kernel_size", "data.shape", "data.resize") and \
            m.family in ("cnn", "conv1d"):
        side = d.shape[2] if m.family == "conv1d" else min(d.model_shape[1:])
        side = conv_out_side(side, side, m.blocks, (m.kernel_size,) * 2, (2, 2), m.block)[0]
        if side < 1:
            hint = "; for 1-D signals use model.family 'conv1d' with data.shape [C, 1, L]" \
                if m.family == "cnn" and 1 in d.shape[1:] else ""
            problems.append(f"model.blocks: got {m.blocks}; with kernel_size {m.kernel_size} "
                            f"the {d.model_shape[1]}x{d.model_shape[2]} input shrinks to "
                            f"nothing{hint}")
    if ok("model.block", "model.kernel_size") and m.block not in ("plain", "bitnet") and \
            m.kernel_size % 2 == 0:
        problems.append(f"model.kernel_size: got {m.kernel_size} with model.block {m.block!r}; "
                        "'same' padding needs an odd kernel size")
    if ok("model.bias", "model.family") and not m.bias and m.family not in ("cnn", "conv1d", "mlp"):
        problems.append(f"model.bias: got false with model.family {m.family!r}; layers without "
                        "biases are built by cnn, conv1d and mlp")
    if ok("model.bias", "model.batch_norm") and not m.bias and m.batch_norm:
        problems.append("model.bias: got false with model.batch_norm true; a BatchNorm folds "
                        "into its conv as a bias (set one of them)")
    if ok("model.block", "compress.prune.kind") and \
            m.block in ("separable", "depthwise", "bitnet") and \
            cfg.compress.prune.kind == "structured":
        problems.append(f"compress.prune.kind: got 'structured' with model.block {m.block!r}; "
                        "structured pruning removes whole channels of full convs only (use "
                        "unstructured)")
    if ok("model.family", "augment") and m.family == "conv1d" and \
            {k for k in image_aug if k != "shift"}:
        problems.append(f"augment: got {image_aug} with model.family 'conv1d'; 1-D signals "
                        "take only augment.shift (along L)")
    t = cfg.train
    if ok("train.executor", "train.num_workers", "train.use_gpu") and \
            t.executor == "trial_actor" and (t.num_workers > 1 or t.use_gpu):
        problems.append(f"train.executor: got 'trial_actor' with num_workers {t.num_workers}, "
                        f"use_gpu {t.use_gpu}; a trial actor trains one CPU worker (several "
                        "workers or GPUs need 'ray_train' or 'auto')")
    if ok("train.use_gpu", "train.num_workers", "train.gpus_per_worker") and t.use_gpu and \
            t.num_workers > 1 and t.gpus_per_worker < 1:
        problems.append(f"train.gpus_per_worker: got {t.gpus_per_worker:g} with use_gpu and "
                        f"num_workers {t.num_workers}; Ray would pack several ranks of one "
                        "trial on one GPU and NCCL refuses duplicate devices at the first "
                        "collective: give each worker a whole GPU (1), or use one worker")
    if ok("search.constraints"):
        problems.extend(constraint_problems(cfg.search.constraints))
    c = cfg.compress
    p, q = c.prune, c.quantize
    fine_tunes = ok("compress") and c.fine_tunes
    if ok("compress") and q.qat and ({q.bits, *q.layer_bits.values()} == {32} or not fine_tunes):
        problems.append(f"compress.quantize.qat: got true with bits {q.bits}, prune.ratio "
                        f"{p.ratio:g}, cluster.k {c.cluster.k}, finetune_epochs "
                        f"{c.finetune_epochs}; quantization-aware fine-tuning needs bits < 32 "
                        "and fine-tune epochs (finetune_epochs >= 1)")
    widths = {q.bits, *q.layer_bits.values()}
    if ok("compress", "model.family") and q.activation_bits and (
            max(widths) > 8 or c.cluster.k or m.family not in INTEGER_FAMILIES):
        problems.append(f"compress.quantize.activation_bits: got {q.activation_bits} with "
                        f"weight bits {sorted(widths, reverse=True)}, cluster.k {c.cluster.k}, "
                        f"model.family {m.family!r}; integer-only models need integer weights "
                        "(bits and every bits_* 8 or fewer, cluster.k 0) and family "
                        f"{', '.join(INTEGER_FAMILIES)}")
    if ok("compress") and q.odd_levels and ((p.ratio > 0 and p.kind == "unstructured") or
                                            c.prune_rows.ratio > 0):
        problems.append(f"compress.quantize.odd_levels: got true with prune.ratio {p.ratio:g} "
                        f"({p.kind}), prune_rows.ratio {c.prune_rows.ratio:g}; odd levels have "
                        "no zero, so a pruned weight would come back as half a step: prune "
                        "structurally or not at all")
    if ok("compress") and c.cluster.k == 1:
        problems.append("compress.cluster.k: got 1; weight clustering needs at least 2 shared "
                        "values per tensor (0 turns it off)")
    if ok("compress") and p.schedule == "gradual" and (p.kind != "unstructured"
                                                      or not fine_tunes or p.ratio == 0):
        problems.append(f"compress.prune.schedule: got 'gradual' with kind {p.kind!r}, ratio "
                        f"{p.ratio:g}, finetune_epochs {c.finetune_epochs}; gradual pruning "
                        "needs unstructured pruning over fine-tune epochs")
    if ok("search.scheduler", "search.grace_epochs", "train.epochs") and \
            cfg.search.scheduler == "mo_asha":
        epochs = trial_epochs(cfg)
        if epochs is not None and epochs <= cfg.search.grace_epochs:
            problems.append(f"search.grace_epochs: got {cfg.search.grace_epochs} with "
                            f"{epochs} dense epochs per trial; mo_asha needs a rung before the "
                            "last dense epoch (grace_epochs < train.epochs)")
    if ok("search.children", "search.space") and cfg.search.children and \
            not any(k.startswith("compress.") for k in cfg.search.space):
        problems.append(f"search.children: got {cfg.search.children} with no compress.* key in "
                        "search.space; children differ from their trial only in compress.* "
                        "values drawn from the space")
    if ok("search.num_trials", "search.time_budget_s") and cfg.search.num_trials is None \
            and cfg.search.time_budget_s is None:
        problems.append("search.num_trials: got None with time_budget_s None; a search needs "
                        "a trial count, a time budget, or both")
    st = cfg.search.storage
    if check_paths and ok("search.storage") and st:
        missing = [n for n in ENV_REF.findall(st) if n not in os.environ]
        if missing:
            problems.append(f"search.storage: got {redact_url(st)!r}; environment variable(s) "
                            f"{', '.join(missing)} are not set")
        if f":{REDACTED}@" in st or f"={REDACTED}" in st:
            problems.append(f"search.storage: got {st!r}; its password was redacted when the "
                            "results were written: pass the real URL (search.storage=...), "
                            "ideally with the password as ${ENV_VAR}")
    if not ok("search.objectives"):
        return
    names = [o[0] for o in cfg.search.objectives]
    for i, (name, direction) in enumerate(cfg.search.objectives):
        obj = metrics.OBJECTIVES.get(name)
        if obj is None:
            problems.append(f"search.objectives[{i}]: got metric {name!r}; must be one of "
                            f"{', '.join(metrics.OBJECTIVES)}")
        elif direction != obj.direction:
            problems.append(f"search.objectives[{i}]: got direction {direction!r} for {name}; "
                            f"{name} is better when {obj.direction}imized")
    if len(set(names)) != len(names):
        problems.append(f"search.objectives: got {names}; each metric at most once")
    binary_only = [n for n in names if n in (metrics.VAL_AUC, metrics.VAL_LOGLOSS)]
    if binary_only and ok("data.num_classes") and cfg.data.num_classes != 2:
        problems.append(f"search.objectives: {', '.join(binary_only)} with data.num_classes "
                        f"{cfg.data.num_classes}; AUC and log loss are measured for two "
                        "classes (use val_accuracy)")
    if check_paths and metrics.ORT_LATENCY_MS in names:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(f"search.objectives: {metrics.ORT_LATENCY_MS} needs "
                            f"{' and '.join(missing)}, not installed here: "
                            "pip install onnx onnxruntime")
    if not names:
        problems.append("search.objectives: got []; needs at least one objective")
    if metrics.ORT_LATENCY_MS in names and ok("compress") and cfg.compress.quantize.activation_bits:
        problems.append(f"search.objectives: {metrics.ORT_LATENCY_MS} with "
                        "compress.quantize.activation_bits 8; an integer model has no ONNX graph "
                        "yet (its C export is what runs it)")


def _check_tabular(cfg: Config, problems: list[str], ok: Callable[..., bool]) -> None:
    """Tabular data and the recsys family go together; the columns are named, distinct and
    not the label; what acts on images, tokens or whole channels is refused."""
    d, m, c = cfg.data, cfg.model, cfg.compress
    if ok("data.name", "data.kind") and d.name == "clicks-mini" and d.kind != "tabular":
        problems.append(f"data.kind: got {d.kind!r}; data.name 'clicks-mini' is 'tabular'")
    if ok("data.name", "data.num_classes") and d.name == "clicks-mini" and d.num_classes != 2:
        problems.append(f"data.num_classes: got {d.num_classes}; clicks-mini's label (click) "
                        "is binary: 2")
    if ok("data.name", "data.kind") and d.kind == "tabular" and \
            d.name not in ("clicks-mini", "parquet"):
        problems.append(f"data.kind: got 'tabular' with data.name {d.name!r}; tabular data is "
                        "clicks-mini or your own parquet")
    tabular = ok("data.kind") and d.kind == "tabular"
    if ok("data.kind", "model.family") and tabular != (m.family == "recsys") and \
            not is_factory_path(m.family):
        problems.append(f"model.family: got {m.family!r} with data.kind {d.kind!r}; tabular "
                        "data is for the 'recsys' family, and recsys takes only tabular data")
    if not tabular:
        return
    cols = ("data.categorical_columns", "data.numeric_columns", "data.label_column")
    if d.name == "parquet" and ok(*cols):
        named = [*d.categorical_columns, *d.numeric_columns]
        if not named:
            problems.append("data.categorical_columns: got []; tabular parquet needs at least "
                            "one categorical or numeric column (data.numeric_columns)")
        repeated = sorted({n for n in named if named.count(n) > 1})
        if repeated:
            problems.append(f"data.categorical_columns/numeric_columns: {repeated} named more "
                            "than once; a column is categorical or numeric, once")
        if d.label_column in named:
            problems.append(f"data.label_column: got {d.label_column!r}, also named as a "
                            "feature column")
    if ok("data.name", "data.categorical_columns") and d.name == "parquet" and \
            m.family == "recsys" and not d.categorical_columns:
        problems.append("data.categorical_columns: got []; the recsys family embeds "
                        "categorical columns and needs at least one")
    unknown = sorted(set(d.column_buckets) - set(d.categorical)) \
        if ok("data.column_buckets", *cols) else []
    if unknown:
        problems.append(f"data.column_buckets: got {unknown}, not categorical columns "
                        f"({list(d.categorical)})")
    if ok("model.buckets", "data.num_buckets") and m.buckets > d.num_buckets:
        problems.append(f"model.buckets: got {m.buckets} with data.num_buckets "
                        f"{d.num_buckets}; a table has at most as many rows as there are "
                        "buckets")
    a = cfg.augment
    aug = {k: v for k, v in (("rotation", a.rotation), ("shift", a.shift), ("shear", a.shear),
                             ("zoom", a.zoom), ("token_dropout", a.token_dropout),
                             ("crop", a.crop)) if v}
    if ok("augment") and (aug or a.prob != 1):
        problems.append(f"augment: got {aug or {'prob': a.prob}} with data.kind 'tabular'; "
                        "tabular rows are not augmented")
    if ok("compress.prune.kind") and c.prune.kind == "structured":
        problems.append("compress.prune.kind: got 'structured' with data.kind 'tabular'; "
                        "structured pruning rewrites conv and recurrent layers (use "
                        "'unstructured', or compress.prune_rows for embedding rows)")
    if ok("data.resize") and d.resize:
        problems.append(f"data.resize: got {d.resize} with data.kind 'tabular'; resizing is "
                        "for 2-D images")


def _check_external_family(cfg: Config, problems: list[str], ok: Callable[..., bool],
                           import_it: bool) -> None:
    """A family of the user's own (``model.family: package.module:Factory``): the user named
    it, so it is trusted in this process (:mod:`distopt.user_models`); on the machine where the
    config was typed, it must import; what only the built-in architectures support is refused."""
    path = cfg.model.family
    trust(path)
    if import_it:
        try:
            load_factory(path)
        except Exception as e:  # ImportError, AttributeError, TypeError, or its module's own
            problems.append(f"model.family: got {path!r}; it cannot be loaded: "
                            f"{type(e).__name__}: {e}")
    if ok("compress.prune.kind") and cfg.compress.prune.kind == "structured":
        problems.append(f"compress.prune.kind: got 'structured' with model.family {path!r}; "
                        "structured pruning rewrites the built-in architectures only (use "
                        "'unstructured')")
    if ok("search.objectives") and any(n == metrics.ORT_LATENCY_MS
                                       for n, _ in cfg.search.objectives):
        problems.append(f"search.objectives: {metrics.ORT_LATENCY_MS} needs the ONNX export, "
                        f"which the built-in families have; model.family {path!r} has none yet")


def trial_epochs(cfg: Config) -> int | None:
    """Dense epochs of a search trial (``search.trial_overrides`` applied), or None if the
    overrides set it to something that is not an integer (reported by its own rule)."""
    value = cfg.search.trial_overrides.get("train.epochs", cfg.train.epochs)
    return value if isinstance(value, int) else None
