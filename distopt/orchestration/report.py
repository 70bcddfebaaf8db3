"""The experiment directory: every trial, the Pareto front, its exported models and plots.

:func:`collect` runs once after a search: it turns Tune's results into ``trials.parquet``,
copies the Pareto models' artifacts to ``models/`` and evaluates their *test* accuracy (the only
use of the test set) from the decoded files. :func:`write_report` derives everything else from
``trials.parquet`` and ``config.yaml`` alone, so ``distopt report DIR`` rebuilds it without
rerunning anything.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from distopt import metrics as M
from distopt.config import Config, ConfigError, load_config
from distopt.pareto import hypervolume, non_dominated
from distopt.storage import Location
from distopt.orchestration.reseed import SEEDS, TEST_MEAN, TEST_SD, WITHIN_NOISE

DUPLICATE_OF = "duplicate_of"  # trials.parquet: the trial whose result a DUPLICATE row got

log = logging.getLogger(__name__)

__all__ = ["BREAKDOWN", "breakdown_cell", "collect", "write_report", "verdict",
           "hypervolume_curve", "load_trials"]

TRIALS = "trials.parquet"
BREAKDOWN = (M.BYTES_HEADER, M.BYTES_INDEX, M.BYTES_SCALES, M.BYTES_VALUES)  # adds to SIZE_BYTES
FINAL_METRICS = (M.VAL_ACCURACY, M.VAL_LOSS, M.TRAIN_ACCURACY, M.GAP, M.SIZE_BYTES, M.PARAMS,
                 M.NONZERO_PARAMS, M.DENSE_FP32_BYTES, M.COMPRESSION_RATIO, M.LATENCY_MS,
                 M.ORT_LATENCY_MS, M.EPOCH, M.TRAIN_SECONDS, M.DENSE_EPOCHS, "time_total_s",
                 *BREAKDOWN)
STOPPED = "STOPPED"  # status of a trial early stopping ended (never on the front)
DUPLICATE = "DUPLICATE"  # sampled values a finished trial had: told its result, not trained
OVERFIT_GAP = 0.02  # train - val accuracy above this: overfitting
UNDERFIT_GAP = -0.02  # below this: the model does worse on data it trained on than on new data


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


def objective_matrix(rows: Sequence[dict[str, Any]], cfg: Config) -> np.ndarray:
    """Objectives as a matrix; sizes on a log10 scale (the front spans decades)."""
    cols = []
    for name, _ in cfg.search.objectives:
        v = np.array([float(r.get(name, math.nan)) for r in rows], dtype=float)
        if name == M.SIZE_BYTES:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.log10(v)
        cols.append(v)
    return np.stack(cols, axis=1) if cols else np.empty((len(rows), 0))


def hv_reference(cfg: Config, points: np.ndarray) -> list[float]:
    """Fixed per experiment: chance accuracy for accuracy, else 10% beyond the worst value."""
    ref = []
    for i, (name, direction) in enumerate(cfg.search.objectives):
        col = points[:, i][np.isfinite(points[:, i])] if len(points) else np.array([])
        if name == M.VAL_ACCURACY:
            ref.append(1.0 / cfg.data.num_classes)
        elif len(col) == 0:
            ref.append(0.0)
        elif direction == "min":
            ref.append(float(col.max() + 0.1 * (abs(col.max()) + 1e-9)))
        else:
            ref.append(float(col.min() - 0.1 * (abs(col.min()) + 1e-9)))
    return ref


def hypervolume_curve(rows: Sequence[dict[str, Any]], cfg: Config) -> tuple[list[int], list[float]]:
    """Hypervolume of the completed trials among the first n, for every trial number n."""
    ordered = sorted(rows, key=lambda r: r["trial_number"])
    pts = objective_matrix(ordered, cfg)
    done = np.array([r["status"] == "COMPLETE" for r in ordered], bool)
    ref = hv_reference(cfg, pts[done])
    dirs = [d for _, d in cfg.search.objectives]
    xs, ys = [], []
    for n in range(1, len(ordered) + 1):
        sel = pts[:n][done[:n]]
        xs.append(ordered[n - 1]["trial_number"])
        ys.append(hypervolume(sel, dirs, ref) if len(sel) else 0.0)
    return xs, ys


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("distopt", "torch", "ray", "optuna", "numpy", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def collect(cfg: Config, location: Location | Path, grid: Any) -> list[dict[str, Any]]:
    """Tune results -> ``trials.parquet`` + ``models/`` in the location's local directory
    (artifacts read from the trials' checkpoints, wherever they are stored); test accuracy of
    the front only."""
    from distopt.data import load_splits
    from distopt.train_loop import evaluate_artifact

    from distopt.orchestration.progress import read_trial_clock

    location = location if isinstance(location, Location) else Location(str(location))
    clock = read_trial_clock(location.local)
    rows = []
    # The grid lists trials in the order Tune created them: that order is the trial number.
    for number, result in enumerate(grid):
        m = result.metrics or {}
        trial_id = m.get("trial_id") or Path(result.path).name
        complete = result.error is None and m.get(M.PHASE) == "final"
        # Ended without error and without its final result: early stopping stopped it.
        stopped = result.error is None and not complete and bool(m)
        row: dict[str, Any] = {
            "trial_id": trial_id, "trial_number": number,
            "status": "COMPLETE" if complete else (STOPPED if stopped else "FAILED"),
            "error": "" if result.error is None else _error_text(result.error),
            # Ray Train trials report their checkpoint's path; trial-actor ones hold it.
            "checkpoint_path": m.get("checkpoint_path") or (
                result.checkpoint.path if result.checkpoint is not None else ""),
            "params_json": json.dumps({k: result.config.get(k) for k in cfg.search.space}),
        }
        for k in cfg.search.space:
            row[f"param.{k}"] = result.config.get(k)
        for k in FINAL_METRICS:
            v = m.get(k, math.nan)
            # A stopped trial keeps the epoch it stopped after; its other numbers are not of
            # a decoded artifact, so they are left out (NaN) rather than mixed in.
            keep = complete or (stopped and k == M.EPOCH)
            row[k] = float(v) if isinstance(v, (int, float)) and keep else math.nan
        times = clock.get(trial_id, {})
        row[M.TRIAL_WALL_S] = times["end"] - times["start"] if complete and len(times) == 2 \
            else math.nan
        # Time the trial spent outside fit() (start-up, teardown, reporting): what scheduling
        # and Ray Train cost on top of the training itself.
        row[M.OVERHEAD_S] = row[M.TRIAL_WALL_S] - row[M.TRAIN_SECONDS]
        row[M.PRECISION] = str(m.get(M.PRECISION, ""))
        row[M.TF32] = bool(m.get(M.TF32, False))
        row[M.EARLY_STOPPED] = bool(m.get(M.EARLY_STOPPED, False))
        # Dense weights another trial trained and stored (search.reuse_dense): its id.
        row[M.DENSE_FROM] = str(m.get(M.DENSE_FROM) or "")
        row["config_json"] = _trial_config_json(cfg, result.config or {})
        row[M.PARENT_ID] = ""
        row[DUPLICATE_OF] = ""
        row["artifact_file"] = M.ARTIFACT_FILE
        rows.append(row)
        if complete and m.get(M.CHILDREN):
            rows += _child_rows(cfg, row, json.loads(m[M.CHILDREN]), result.config or {})
    rows.sort(key=lambda r: r["trial_number"])  # stable: children stay after their parent
    rows += _duplicate_rows(cfg, location, rows)

    pts = objective_matrix(rows, cfg)
    done = np.array([r["status"] == "COMPLETE" for r in rows], bool)
    front = np.zeros(len(rows), bool)
    if done.any():
        front[np.flatnonzero(done)] = non_dominated(pts[done], [d for _, d in cfg.search.objectives])
    output = location.local
    models = output / "models"
    models.mkdir(parents=True, exist_ok=True)
    splits = load_splits(cfg.data) if front.any() else None
    for row, on_front in zip(rows, front):
        row["pareto"] = bool(on_front)
        row[M.TEST_ACCURACY] = math.nan
        row["artifact"] = ""
        if not on_front:
            continue
        src = row["checkpoint_path"].removeprefix("file://").rstrip("/") + "/" + \
            row["artifact_file"]
        dst = models / f"{row['trial_id']}.dopt"
        dst.write_bytes(location.read_bytes(src))
        row["artifact"] = str(dst.relative_to(output))
        assert splits is not None
        row[M.TEST_ACCURACY] = evaluate_artifact(dst.read_bytes(), splits, "test")[M.TEST_ACCURACY]
    write_trials(rows, output)
    return rows


def write_trials(rows: list[dict[str, Any]], output: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), output / TRIALS)


def _child_rows(cfg: Config, parent: dict[str, Any], children: list[dict[str, Any]],
                params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a trial's children (train once, compress many): the parent's sampled values
    with the child's compress.* values, its decoded metrics, ``parent_id``, and its artifact
    beside the parent's in the same checkpoint. Their time is in the parent's ``train_seconds``
    and ``trial_wall_s``, so theirs are only ``train_seconds`` (fork, compress, evaluate)."""
    rows = []
    for i, child in enumerate(children):
        values = {**{k: params.get(k) for k in cfg.search.space}, **child["params"]}
        row = {**parent, "trial_id": f"{parent['trial_id']}-c{i}", M.PARENT_ID: parent["trial_id"],
               "params_json": json.dumps(values), "artifact_file": child["file"],
               "config_json": _trial_config_json(cfg, values),
               M.TRIAL_WALL_S: math.nan, M.OVERHEAD_S: math.nan}
        for k in cfg.search.space:
            row[f"param.{k}"] = values.get(k)
        for k in FINAL_METRICS:
            v = child["metrics"].get(k, math.nan)
            row[k] = float(v) if isinstance(v, (int, float)) else math.nan
        rows.append(row)
    return rows


def _duplicate_rows(cfg: Config, location: Location, rows: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """Rows for the sampler's duplicates: values it proposed again after a trial (or child)
    had finished with them, answered with that result instead of a training (the study holds
    them as trials with user attribute ``duplicate_of``). Status ``DUPLICATE``, the original's
    id in ``duplicate_of``, no metrics of their own: never on the front, never counted twice."""
    import optuna

    from distopt.orchestration._optuna_search import DUPLICATE_OF as ATTR, TUNE_TRIAL_ID
    from distopt.config import storage_url
    from distopt.orchestration.tuning import SearchPaths

    try:
        study = optuna.load_study(study_name=cfg.name,
                                  storage=storage_url(cfg) or SearchPaths(location).study_url)
    except KeyError:
        return []
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}

    def tune_id(number: int) -> str:
        t = by_number.get(number)
        if t is None:
            return ""
        if "parent" in t.user_attrs:  # a child: <parent>-c<i> (file child_<i>.dopt)
            index = str(t.user_attrs.get("file", "")).removeprefix("child_").removesuffix(".dopt")
            return f"{tune_id(t.user_attrs['parent'])}-c{index}"
        return str(t.user_attrs.get(TUNE_TRIAL_ID, ""))

    template = rows[0] if rows else {}
    out = []
    for t in trials:
        if ATTR not in t.user_attrs:
            continue
        original = tune_id(int(t.user_attrs[ATTR]))
        row = {k: (math.nan if isinstance(v, float) else type(v)() if v is not None else None)
               for k, v in template.items()}
        row.update({"trial_id": f"{original or 'unknown'}-dup{t.number}",
                    "trial_number": len(rows) + len(out), "status": DUPLICATE,
                    DUPLICATE_OF: original, M.PARENT_ID: "", "artifact_file": "",
                    "params_json": json.dumps(t.params),
                    "config_json": _trial_config_json(cfg, t.params)})
        for k in cfg.search.space:
            row[f"param.{k}"] = t.params.get(k)
        out.append(row)
    return out


def _trial_config_json(cfg: Config, params: dict[str, Any]) -> str:
    """The full config a trial ran with; for a trial whose sampled values were invalid, the
    starting config with those values written in unvalidated."""
    sampled = {k: params[k] for k in cfg.search.space if k in params}
    try:
        return json.dumps(cfg.trial_config().with_overrides(sampled).public_dict())
    except ConfigError:
        raw = cfg.trial_config().public_dict()
        for key, value in sampled.items():
            section, _, leaf = key.rpartition(".")
            raw[section][leaf] = value
        return json.dumps(raw)


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Tune wraps the trial's exception; the last line names the root cause.
    return (text[-1] if text else type(error).__name__)[:500]


def load_trials(output: Path) -> list[dict[str, Any]]:
    return pq.read_table(output / TRIALS).to_pylist()


def _plot_front(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "COMPLETE"]
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r[M.SIZE_BYTES])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r[M.SIZE_BYTES] for r in done], [r[M.VAL_ACCURACY] for r in done], s=18,
               color="0.6", label="trials")
    ax.step([r[M.SIZE_BYTES] for r in front], [r[M.VAL_ACCURACY] for r in front], where="post",
            color="C3", lw=1.2)
    ax.scatter([r[M.SIZE_BYTES] for r in front], [r[M.VAL_ACCURACY] for r in front], s=36,
               color="C3", label="Pareto front", zorder=3)
    for r in front:
        ax.annotate(r["trial_id"][-5:], (r[M.SIZE_BYTES], r[M.VAL_ACCURACY]), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (bytes, log scale)")
    ax.set_ylabel("validation accuracy (decoded artifact)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_hv(xs: list[int], ys: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o", ms=3)
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _kept_onnx(info: Any, output: Path, artifact: Path) -> dict[str, Any]:
    """``{"onnx": info}`` if that export is still current (its file exists, made from this
    artifact's bytes), else nothing."""
    if not isinstance(info, dict) or not isinstance(info.get("file"), str):
        return {}
    current = artifact.is_file() and hashlib.sha256(artifact.read_bytes()).hexdigest() == \
        info.get("source_sha256")
    return {"onnx": info} if current and (output / info["file"]).is_file() else {}


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

    with open(output / "pareto.csv", "w", newline="") as f:
        cols = ["trial_id", M.PARENT_ID, M.VAL_ACCURACY, M.TEST_ACCURACY, M.SIZE_BYTES,
                *BREAKDOWN, M.COMPRESSION_RATIO,
                M.NONZERO_PARAMS, M.PARAMS, M.LATENCY_MS, M.ORT_LATENCY_MS, M.TRAIN_ACCURACY,
                TEST_MEAN, TEST_SD, SEEDS, WITHIN_NOISE, "artifact"] + \
            [f"param.{k}" for k in keys]
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(front)

    xs, ys = hypervolume_curve(rows, cfg)
    _plot_front(rows, output / "pareto.png", f"{cfg.name}: accuracy vs size")
    _plot_hv(xs, ys, output / "hypervolume.png", f"{cfg.name}: hypervolume by trial")

    failed = [r for r in rows if r["status"] not in ("COMPLETE", STOPPED, DUPLICATE)]
    # Objectives beyond accuracy and bytes (latency, non-zero parameters) get a column too.
    extra = [n for n, _ in cfg.search.objectives if n not in (M.VAL_ACCURACY, M.SIZE_BYTES)]
    # search.reseed: the front's test accuracy as mean +- sd over seeds, and the noise mark.
    reseeded = any(r.get(SEEDS, 0) and r[SEEDS] > 1 for r in front)
    stopped = sum(r["status"] == STOPPED for r in rows)
    duplicates = sum(r["status"] == DUPLICATE for r in rows)
    complete = len(rows) - len(failed) - stopped - duplicates
    children = sum(bool(r.get(M.PARENT_ID)) for r in rows)
    reused = sum(bool(r.get(M.DENSE_FROM)) and not r.get(M.PARENT_ID) for r in rows)
    lines = [f"# {cfg.name}: Pareto front", "",
             f"{len(rows)} trials, {complete} complete"
             + (f" ({children} of them children: compressed from another trial's dense model, "
                "search.children)" if children else "") + ", "
             + (f"{reused} fine-tuned the stored dense model of an earlier trial of the same "
                "dense configuration instead of training one (search.reuse_dense), "
                if reused else "")
             + (f"{stopped} stopped early ({cfg.search.scheduler}), " if stopped else "")
             + (f"{duplicates} sampled again after they had finished (answered with the "
                "earlier result, not trained), " if duplicates else "")
             + f"{len(failed)} failed; "
             f"sampler {cfg.search.sampler} (seed {cfg.search.seed}); objectives "
             + ", ".join(f"{n} ({d})" for n, d in cfg.search.objectives) + ".",
             "Accuracies are those of the models decoded from their artifacts; test accuracy is "
             "evaluated once, after the search, on the front only.", "",
             "| trial | " + " | ".join(keys) + " | val acc | test acc | "
             + ("test acc over seeds | " if reseeded else "") + "bytes | header / index / "
             "scales+biases / values | compression | "
             + "".join(f"{n} | " for n in extra) + "fit |",
             "|---" * (len(keys) + len(extra) + 7 + reseeded) + "|"]
    for r in front:
        vals = " | ".join(_cell(r.get(f"param.{k}")) for k in keys)
        lines.append(f"| {r['trial_id']} | {vals} | {r[M.VAL_ACCURACY]:.4f} | "
                     f"{r[M.TEST_ACCURACY]:.4f} | "
                     + (f"{_over_seeds(r)} | " if reseeded else "")
                     + f"{int(r[M.SIZE_BYTES]):,} | {breakdown_cell(r)} | "
                     f"{r[M.COMPRESSION_RATIO]:.1f}x | "
                     + "".join(f"{_cell(r.get(n))} | " for n in extra)
                     + f"{verdict(r[M.TRAIN_ACCURACY], r[M.VAL_ACCURACY])} |")
    if reseeded:
        lines += ["", "Test accuracy over seeds (`search.reseed`): mean +- standard deviation "
                  "over the search's run and its retrainings with other seeds; *within noise*: "
                  "its advantage over the next smaller front model is at most the spread of "
                  "the difference of two single runs, sqrt(sd^2 + sd_smaller^2)."]
    if failed:
        lines += ["", "## Failed trials", "", "| trial | error |", "|---|---|"]
        lines += [f"| {r['trial_id']} | {r['error'].replace('|', '/')} |" for r in failed]
    lines += ["", f"Final hypervolume: {ys[-1] if ys else 0.0:.4g}.", "",
              "![front](pareto.png)", "", "![hypervolume](hypervolume.png)", ""]
    (output / "report.md").write_text("\n".join(lines))

    # `distopt export` added ONNX files to the last manifest: keep each entry whose .onnx is
    # still there and was made from the very .dopt the front still holds.
    exported: dict[str, Any] = {}
    if (output / M.MANIFEST_FILE).is_file():
        try:
            old = json.loads((output / M.MANIFEST_FILE).read_text())
            exported = {e["trial_id"]: e["onnx"] for e in old.get("models", []) if "onnx" in e}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s: unreadable; rewritten without its ONNX entries",
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
            "metrics": {k: r[k] for k in (M.VAL_ACCURACY, M.TEST_ACCURACY, M.SIZE_BYTES,
                                          M.COMPRESSION_RATIO, M.PARAMS, M.NONZERO_PARAMS,
                                          M.LATENCY_MS, M.ORT_LATENCY_MS, M.TRAIN_ACCURACY,
                                          TEST_MEAN, TEST_SD, SEEDS, WITHIN_NOISE)
                        if k in r},
            **_kept_onnx(exported.get(r["trial_id"]), output, output / r["artifact"]),
        } for r in front],
    }
    (output / M.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=float) + "\n")
    return {"trials": len(rows), "failed": len(failed), "front": len(front),
            "hypervolume": ys[-1] if ys else 0.0}


def _over_seeds(r: dict[str, Any]) -> str:
    if not r.get(SEEDS):
        return "-"
    text = f"{r[TEST_MEAN]:.4f} +- {r[TEST_SD]:.4f} ({int(r[SEEDS])} seeds)"
    return text + (", within noise" if r.get(WITHIN_NOISE) else "")


def _cell(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _artifact_digest(path: Path) -> str:
    from distopt.compress import decode

    return str(decode(path.read_bytes(), str(path)).meta.get("data_digest", ""))


def save_config(cfg: Config, output: Path) -> None:
    (output / "config.yaml").write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
