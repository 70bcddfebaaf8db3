"""The report of a search, derived from ``trials.parquet`` and ``config.yaml`` alone (so
``distopt report DIR`` rebuilds it without rerunning anything): ``pareto.csv``, ``report.md``,
``manifest.json`` and the plots."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from distopt import jsonio
from distopt import metrics as M
from distopt.compress import decode
from distopt.config import Config, load_config
from distopt.constraints import bounds
from distopt.exporters import EXPORTERS
from distopt.results.objectives import hypervolume_curve
from distopt.results.plots import plot_front, plot_hypervolume
from distopt.results.trials import (AT_CHANCE, BREAKDOWN, DUPLICATE, FINAL_EPOCHS, FINAL_SIZE,
                                    OVER_BUDGET, SEEDS, STOPPED, TEST_MEAN, TEST_SD, UNFINISHED,
                                    WITHIN_NOISE, load_trials)

log = logging.getLogger(__name__)

__all__ = ["breakdown_cell", "save_config", "verdict", "write_report"]

OVERFIT_GAP = 0.02  # train - val accuracy above this: overfitting
UNDERFIT_GAP = -0.02  # below this: the model does worse on data it trained on than on new data


DEVICE_COLUMNS = (M.FLASH_BYTES, M.WEIGHT_FLASH_BYTES, M.PEAK_RAM_BYTES, M.MACS)


def verdict(train_accuracy: float, val_accuracy: float) -> str:
    """Over/underfitting from the train-validation gap. Both accuracies are of the decoded
    artifact in eval mode (no dropout, no augmentation): train accuracy on a fixed subset of the
    training data as large as the validation set, so the gap compares like with like."""
    if any(math.isnan(v) for v in (train_accuracy, val_accuracy)):
        return "unknown"
    gap = train_accuracy - val_accuracy
    if gap > OVERFIT_GAP:
        return f"overfits (gap {gap:+.3f})"
    if gap < UNDERFIT_GAP:
        return f"underfits (gap {gap:+.3f}): regularization or augmentation could be weaker"
    return f"balanced (gap {gap:+.3f})"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("distopt", "torch", "ray", "optuna", "numpy", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _kept_exports(exports: dict[str, Any], output: Path, artifact: Path) -> dict[str, Any]:
    """The exports (``{format: info}``, :mod:`distopt.exporters`) that are still current: the
    file exists and was made from this artifact's bytes."""
    if not exports:
        return {}
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest() if artifact.is_file() else None
    return {name: info for name, info in exports.items()
            if isinstance(info, dict) and isinstance(info.get("file"), str) and digest and
            info.get("source_sha256") == digest and (output / info["file"]).is_file()}


def breakdown_cell(r: dict[str, Any]) -> str:
    """Where a model's bytes go, as ``header / index / scales+biases / values``; ``-`` for
    format-v1 files (one jointly compressed body: no exact split)."""
    parts = [r.get(k) for k in BREAKDOWN]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in parts):
        return "-"
    return " / ".join(f"{int(v):,}" for v in parts)


def write_report(output: Path) -> dict[str, Any]:
    """pareto.csv, pareto.png, hypervolume.png, report.md, manifest.json from stored results."""
    cfg = load_config(output / "config.yaml")
    rows = load_trials(output)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r[M.SIZE_BYTES])
    keys = list(cfg.search.space)
    # The columns of the search's quality objective (val_auc, val_logloss) lead, with their
    # test values, beside accuracy.
    quality = M.quality(cfg.search.objectives)[0]
    qcols = [quality, M.QUALITY_TEST[quality]] if quality != M.VAL_ACCURACY else []

    with open(output / "pareto.csv", "w", newline="") as f:
        cols = ["trial_id", M.PARENT_ID, *qcols, M.VAL_ACCURACY, M.TEST_ACCURACY, M.SIZE_BYTES,
                *BREAKDOWN, M.COMPRESSION_RATIO, *M.DEVICE_METRICS, M.EMBEDDING_FLASH_BYTES,
                M.NONZERO_PARAMS, M.PARAMS, M.LATENCY_MS, M.ORT_LATENCY_MS, M.TRAIN_ACCURACY,
                TEST_MEAN, TEST_SD, SEEDS, WITHIN_NOISE, FINAL_EPOCHS, FINAL_SIZE,
                "artifact"] + \
            [f"param.{k}" for k in keys]
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(front)

    xs, ys = hypervolume_curve(rows, cfg)
    plot_front(rows, output / "pareto.png", f"{cfg.name}: {M.QUALITY_LABEL[quality]} vs size",
               quality)
    plot_hypervolume(xs, ys, output / "hypervolume.png", f"{cfg.name}: hypervolume by trial")

    failed = [r for r in rows if r["status"] not in ("COMPLETE", STOPPED, DUPLICATE, UNFINISHED,
                                                     OVER_BUDGET)]
    unfinished = sum(r["status"] == UNFINISHED for r in rows)
    untrained = sum(r["status"] == OVER_BUDGET for r in rows)
    over = sum(r["status"] == "COMPLETE" and bool(r.get(M.OVER_BUDGET)) for r in rows)
    budget = bounds(cfg.search.constraints)
    # Objectives beyond accuracy, bytes and the device's costs (latency, non-zero parameters)
    # get a column too.
    extra = [n for n, _ in cfg.search.objectives
             if n not in (M.VAL_ACCURACY, quality, M.SIZE_BYTES, *DEVICE_COLUMNS)]
    # search.final: the chosen front rows' test accuracy as mean +- sd over their final runs,
    # and the noise mark.
    reseeded = any(r.get(SEEDS) for r in front)
    stopped = sum(r["status"] == STOPPED for r in rows)
    duplicates = sum(r["status"] == DUPLICATE for r in rows)
    complete = len(rows) - len(failed) - stopped - duplicates - unfinished - untrained
    children = sum(bool(r.get(M.PARENT_ID)) for r in rows)
    reused = sum(bool(r.get(M.DENSE_FROM)) and not r.get(M.PARENT_ID) for r in rows)
    chance = sum(bool(r.get(AT_CHANCE)) for r in rows)
    lines = [f"# {cfg.name}: Pareto front" + (" so far (partial)" if unfinished else ""), "",
             (f"**Partial: the search has not finished.** {unfinished} trial(s) were running "
              "or pending when it stopped (UNFINISHED, not on the front); this report is "
              "of the trials finished by then, and the search writes its own when it ends "
              "(`--resume`).\n\n" if unfinished else "")
             + f"{len(rows)} trials, {complete} complete"
             + (f" ({children} of them children: compressed from another trial's dense model, "
                "search.children)" if children else "") + ", "
             + (f"{reused} fine-tuned the stored dense model of an earlier trial of the same "
                "dense configuration instead of training one (search.reuse_dense), "
                if reused else "")
             + (f"{stopped} stopped early ({cfg.search.scheduler}), " if stopped else "")
             + (f"{duplicates} sampled again after they had finished (answered with the "
                "earlier result, not trained), " if duplicates else "")
             + (f"{chance} no better than chance (kept off the front), " if chance else "")
             + (f"{untrained} over budget by their architecture alone (not trained), "
                if untrained else "")
             + (f"{over} trained but over budget (kept off the front), " if over else "")
             + f"{len(failed)} failed; "
             f"sampler {cfg.search.sampler} (seed {cfg.search.seed}); objectives "
             + ", ".join(f"{n} ({d})" for n, d in cfg.search.objectives)
             + (f"; budgets (search.constraints): {'; '.join(b.text() for b in budget)}"
                if budget else "") + ".",
             "Accuracies are those of the models decoded from their artifacts; test accuracy is "
             "evaluated once, after the search, on the front only. *bytes*: the .dopt file "
             "(storage and download); *flash*: what a device keeps to run the model in place "
             "(weights packed at their bit width, float32 scales, codebooks and biases; of "
             "them, the packed weights alone in *weights*); *RAM*: the largest input + output "
             "activation buffer of any layer (float32, batch 1); *MACs* per inference "
             "(docs/results.md)."
             + (" Integer models (compress.quantize.activation_bits 8): accuracies are the "
                "integer reference's; flash holds an int32 multiplier and an int8 shift per "
                "output channel instead of a float32 scale, and RAM counts int8 activations."
                if _integer(cfg) else ""), "",
             "| trial | " + " | ".join(keys) + " | "
             + "".join(f"{p} {M.QUALITY_LABEL[quality]} | " for p in ("val", "test") if qcols)
             + "val acc | test acc | "
             + (f"final stage test {M.QUALITY_LABEL[quality]} | " if reseeded else "")
             + "bytes | header / index / "
             "scales+biases / values | compression | flash (weights) | RAM | MACs | "
             + "".join(f"{n} | " for n in extra) + "fit |",
             "|---" * (len(keys) + len(extra) + 10 + reseeded + len(qcols)) + "|"]
    for r in front:
        vals = " | ".join(_cell(r.get(f"param.{k}")) for k in keys)
        lines.append(f"| {r['trial_id']} | {vals} | "
                     + "".join(f"{r.get(k, math.nan):.4f} | " for k in qcols)
                     + f"{r[M.VAL_ACCURACY]:.4f} | "
                     f"{r[M.TEST_ACCURACY]:.4f} | "
                     + (f"{_over_seeds(r)} | " if reseeded else "")
                     + f"{int(r[M.SIZE_BYTES]):,} | {breakdown_cell(r)} | "
                     f"{r[M.COMPRESSION_RATIO]:.1f}x | {_device_cells(r)} | "
                     + "".join(f"{_cell(r.get(n))} | " for n in extra)
                     + f"{verdict(r[M.TRAIN_ACCURACY], r[M.VAL_ACCURACY])} |")
    if reseeded:
        final = cfg.search.final
        lines += ["", "Final stage (`search.final`): the chosen front configurations ("
                  + (f"the best by validation accuracy at {final.select.metric} <= "
                     + ", ".join(f"{b:,.0f}" for b in final.select.budgets)
                     if final.select.budgets else "the whole front")
                  + ") trained again; test accuracy as mean +- standard deviation over "
                  + ("the search's run and its retrainings with other seeds"
                     if final.epochs is None else
                     f"runs of {final.epochs} dense epochs with seeds train.seed, +1, ...")
                  + "; *within noise*: its advantage over the next smaller chosen model is at "
                  "most the spread of the difference of two single runs, "
                  "sqrt(sd^2 + sd_smaller^2)."]
    if failed:
        lines += ["", "## Failed trials", "", "| trial | error |", "|---|---|"]
        lines += [f"| {r['trial_id']} | {r['error'].replace('|', '/')} |" for r in failed]
    lines += ["", f"Final hypervolume: {ys[-1] if ys else 0.0:.4g}.", "",
              "![front](pareto.png)", "", "![hypervolume](hypervolume.png)", ""]
    (output / "report.md").write_text("\n".join(lines))

    # `distopt export` added exported files to the last manifest: keep each entry whose file
    # is still there and was made from the very .dopt the front still holds.
    exported: dict[str, dict[str, Any]] = {}
    if (output / M.MANIFEST_FILE).is_file():
        try:
            old = json.loads((output / M.MANIFEST_FILE).read_text())
            exported = {e["trial_id"]: {k: e[k] for k in EXPORTERS if k in e}
                        for e in old.get("models", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s: unreadable; rewritten without its export entries",
                        output / M.MANIFEST_FILE)
    manifest = {
        "experiment": cfg.name, "versions": _versions(),
        "objectives": [list(o) for o in cfg.search.objectives],
        "models": [{
            "file": r["artifact"], "trial_id": r["trial_id"],
            M.PARENT_ID: r.get(M.PARENT_ID, ""),
            "config": json.loads(r["config_json"]),
            "seed": json.loads(r["config_json"])["train"]["seed"],
            "data_digest": _artifact_digest(output / r["artifact"]),
            "metrics": {k: r[k] for k in (*qcols, M.VAL_ACCURACY, M.TEST_ACCURACY, M.SIZE_BYTES,
                                          *M.DEVICE_METRICS,
                                          M.COMPRESSION_RATIO, M.PARAMS, M.NONZERO_PARAMS,
                                          M.LATENCY_MS, M.ORT_LATENCY_MS, M.TRAIN_ACCURACY,
                                          TEST_MEAN, TEST_SD, SEEDS, WITHIN_NOISE)
                        if k in r},
            **_kept_exports(exported.get(r["trial_id"], {}), output, output / r["artifact"]),
        } for r in front],
    }
    (output / M.MANIFEST_FILE).write_text(jsonio.dumps(manifest))
    return {"trials": len(rows), "failed": len(failed), "front": len(front),
            "hypervolume": ys[-1] if ys else 0.0}


def _device_cells(r: dict[str, Any]) -> str:
    """``flash (weights) | RAM | MACs`` of a row; dashes for rows written before distopt
    measured them."""
    def num(k: str) -> str:
        v = r.get(k)
        return f"{int(v):,}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"
    return (f"{num(M.FLASH_BYTES)} ({num(M.WEIGHT_FLASH_BYTES)}) | {num(M.PEAK_RAM_BYTES)} | "
            f"{num(M.MACS)}")


def _over_seeds(r: dict[str, Any]) -> str:
    if not r.get(SEEDS):
        return "-"
    runs = int(r[SEEDS])
    text = (f"{r[TEST_MEAN]:.4f} +- {r[TEST_SD]:.4f} ({runs} seeds" if runs > 1 else
            f"{r[TEST_MEAN]:.4f} (1 run") + f", {int(r.get(FINAL_EPOCHS) or 0)} epochs)"
    return text + (", within noise" if r.get(WITHIN_NOISE) else "")


def _integer(cfg: Config) -> bool:
    """Whether the search's models can be integer (activation_bits set or searched)."""
    return bool(cfg.compress.quantize.activation_bits) or \
        "compress.quantize.activation_bits" in cfg.search.space


def _cell(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _artifact_digest(path: Path) -> str:
    """The data digest a front model's file records; "" (and a warning) for a file that is
    gone: the rest of the report is rebuilt from trials.parquet alone."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.warning("warning: %s is missing: the report is rebuilt without it (its manifest "
                    "entry has no data digest); rerun the search to get the model back", path)
        return ""
    return str(decode(data, str(path)).meta.get("data_digest", ""))


def save_config(cfg: Config, output: Path) -> None:
    (output / "config.yaml").write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
