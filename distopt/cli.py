"""The ``distopt`` command: parse, validate, run, report. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Sequence

import yaml

from distopt import __version__, jsonio
from distopt import metrics as M
from distopt.api import (SearchInterrupted, check_data, comparable, config_differences,
                         open_location, search, stored_public, unreachable)
from distopt.config import ConfigError, bits_text, load_config, reference_markdown
from distopt.data import DataError
from distopt.exporters import EXPORTERS
from distopt.results.trials import TRIALS
from distopt.storage import Location, is_uri
from distopt.workdir import MARKER, check_output, create_output, replace_output

log = logging.getLogger("distopt")

EXIT_CONFIG = 2  # bad config or bad command line: nothing was started
EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM: stopped cleanly, resumable


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, which the commands turn
    into a clean stop and the exact command that resumes. Tune's own SIGINT handler stays off:
    it would end the running trials as errors and print Ray's restore hint instead."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _resume_command(args: argparse.Namespace, out: object) -> str:
    # Both resume the config stored in the output: no --config or overrides needed.
    return shlex.join(["distopt", args.command, "--output", str(out), "--resume"])


class _ConsoleHandler(logging.StreamHandler):
    """The command's console: distopt's messages as plain lines on the current stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout  # whatever stdout is now (a capture, a pipe), never a stale one
        super().emit(record)


def _setup_logging(verbose: bool) -> None:
    """One console handler, however often ``main`` runs in a process (a test, a notebook):
    a second call replaces it instead of adding another."""
    for old in [h for h in log.handlers if isinstance(h, _ConsoleHandler)]:
        log.removeHandler(old)
    handler = _ConsoleHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def cmd_train(args: argparse.Namespace) -> int:
    if is_uri(args.output):
        raise ConfigError([f"--output: got {args.output!r}; `distopt train` writes a local "
                           "directory (searches take s3:// and other URIs)"], "command line")
    out = Path(args.output)
    problems = check_output(out, args.resume, args.overwrite)
    if problems:
        raise ConfigError(problems, "command line")
    if args.resume and (out / "config.yaml").exists():
        # What was started is resumed: its stored config (the same --config and overrides
        # may be given again, but nothing that changes it: its checkpoints are of that one).
        cfg = load_config(args.config or out / "config.yaml", args.overrides)
        changed = config_differences(stored_public(out), comparable(cfg.public_dict()))
        if changed:
            raise ConfigError([f"--resume: the config differs from the one {out} was started "
                               f"with in {'; '.join(changed)}; resume with the config it "
                               "started with (or start again with --overwrite)"],
                              "command line")
    else:
        cfg = load_config(args.config, args.overrides)
    check_data(cfg)

    # Ray is imported once the config is valid, and joined (or started) before the output is
    # made: a cluster that is not there leaves nothing behind. One CPU worker trains in this
    # process, as a search trial trains in its trial actor (no worker group to start); a
    # teacher to train first, several workers or GPUs need Ray.
    from distopt.orchestration.run import ensure_ray, fit_local, run_trial, trains_in_actor
    from distopt.orchestration.teacher import distills, ensure_teacher
    from distopt.training.compression import Compression

    here = trains_in_actor(cfg)
    if not here or distills(cfg):
        ensure_ray(verbose=args.verbose)
    if args.overwrite:
        replace_output(out, "train")
    else:
        create_output(out, "train")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
    log.info("training %s: %s x%d, %d+%d epochs, prune %.2f %s, weight bits %s",
             cfg.name, cfg.model.family, cfg.train.num_workers, cfg.train.epochs,
             Compression(cfg.compress).finetune_epochs, cfg.compress.prune.ratio,
             cfg.compress.prune.kind, bits_text(cfg.public_dict()["compress"]))
    _stop_on_signals()
    try:
        cfg = ensure_teacher(cfg, Location(str(out)), out / "ray")
        result = fit_local(cfg, directory=out / "ray" / "local") if here else \
            run_trial(cfg, out / "ray", name="train", evaluate_test=True)
        # (A signal while these are written: resuming writes them again from the last
        # checkpoint, the same files.)
        (out / M.ARTIFACT_FILE).write_bytes(result.artifact)
        m = dict(result.metrics)
        (out / M.METRICS_FILE).write_text(jsonio.dumps(m))
        (out / "history.json").write_text(jsonio.dumps(result.history))
    except KeyboardInterrupt as e:
        log.info("\ntraining interrupted (%s); the epochs checkpointed in %s are kept. "
                 "Resume with:\n  %s", str(e) or "SIGINT", out / "ray",
                 _resume_command(args, out))
        return EXIT_INTERRUPTED
    log.info(
        "\n%-12s %s\n%-12s %.4f (decoded artifact)\n%-12s %.4f\n%-12s %s bytes (%.1fx smaller "
        "than dense fp32 %s)\n%-12s %s bytes (packed weights %s), RAM %s bytes, %s MACs\n"
        "%-12s %s of %s non-zero\n%-12s %.3f ms\n%-12s %s\n%-12s %s",
        "precision", m[M.PRECISION], "val acc", m[M.VAL_ACCURACY], "test acc",
        m.get(M.TEST_ACCURACY, float("nan")), "size", f"{m[M.SIZE_BYTES]:,}",
        m[M.COMPRESSION_RATIO], f"{m[M.DENSE_FP32_BYTES]:,}", "flash", f"{m[M.FLASH_BYTES]:,}",
        f"{m[M.WEIGHT_FLASH_BYTES]:,}", f"{m[M.PEAK_RAM_BYTES]:,}", f"{m[M.MACS]:,}", "params",
        f"{m[M.NONZERO_PARAMS]:,}", f"{m[M.PARAMS]:,}", "latency", m[M.LATENCY_MS],
        "artifact", out / M.ARTIFACT_FILE, "metrics", out / M.METRICS_FILE)
    if not math.isnan(m.get(M.VAL_AUC, math.nan)):  # binary labels
        log.info("%-12s %.4f val, %.4f test; log loss %.4f val, %.4f test", "auc",
                 m[M.VAL_AUC], m.get(M.TEST_AUC, float("nan")), m[M.VAL_LOGLOSS],
                 m.get(M.TEST_LOGLOSS, float("nan")))
    return 0


# The driver's files of a search, kept in its local (staging) directory and uploaded to a
# remote output; Ray writes tune/ and train/ to the output itself.
DRIVER_FILES = ["config.yaml", "study.db", MARKER]


def _download_driver_files(out: Location, resume: bool) -> None:
    """Before a remote search resumes: the stored config and study from the output, unless the
    staging directory already has them (this driver ran the search and may have more)."""
    if out.remote and resume and out.exists():
        out.local.mkdir(parents=True, exist_ok=True)
        missing = [f for f in DRIVER_FILES if not (out.local / f).exists()]
        out.download(missing, out.local)


def cmd_search(args: argparse.Namespace) -> int:
    out = open_location(args.output) if args.output else None
    if out is not None:
        try:
            _download_driver_files(out, args.resume)
        except OSError as e:
            raise ConfigError([unreachable(out, e)], "command line") from None
    stored = out.local / "config.yaml" if out is not None else None
    if args.resume and args.config is None and stored is not None and stored.exists():
        cfg = load_config(stored, args.overrides)  # resume what was started
    else:
        cfg = load_config(args.config, args.overrides)
    _stop_on_signals()
    try:
        result = search(cfg, out, resume=args.resume, overwrite=args.overwrite,
                        verbose=args.verbose)
    except SearchInterrupted as e:
        log.info("\nsearch interrupted (%s): %d trial(s) had finished and are kept in %s; "
                 "the interrupted ones continue from their last epoch checkpoint. Resume "
                 "with:\n  %s", str(e), e.finished, e.output, _resume_command(args, e.output))
        return EXIT_INTERRUPTED
    log.info("\n%s", result.report.read_text().split("\n![")[0].strip())
    log.info("\n%d trials (%d failed), %d on the front; results in %s",
             result.summary["trials"], result.summary["failed"], result.summary["front"],
             result.output)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from distopt.results.report import write_report

    out = open_location(args.directory)
    stage = out.local
    try:
        if out.remote:
            stage.mkdir(parents=True, exist_ok=True)
            out.download([TRIALS, "config.yaml", "models", MARKER], stage)
    except OSError as e:
        raise ConfigError([unreachable(out, e)], "command line") from None
    if (stage / "config.yaml").exists() and (stage / MARKER).exists() and \
            not (stage / TRIALS).exists():
        return _partial_report(out)
    if not (stage / TRIALS).exists() or not (stage / "config.yaml").exists():
        raise ConfigError([f"{out}: no {TRIALS} and config.yaml; is it a search's output?"],
                          "command line")
    summary = write_report(stage)
    if out.remote:
        out.upload(stage, skip=("study.db",))
    log.info("%s", (stage / "report.md").read_text().split("\n![")[0].strip())
    log.info("\nrebuilt pareto.csv, pareto.png, hypervolume.png, report.md, manifest.json "
             "(%d trials, %d on the front)", summary["trials"], summary["front"])
    return 0


def _partial_report(out: Location) -> int:
    """``distopt report`` on a search that has not finished: a report of the trials finished
    so far, in ``<output>/partial/``, from Tune's saved state (local outputs)."""
    resume = f"`distopt search --output {out} --resume`"
    from distopt.orchestration.partial import PARTIAL_DIR, has_saved_trials, write_partial_report

    if out.remote or not has_saved_trials(out.local):
        raise ConfigError([f"{out} is a search that has not finished ({TRIALS} is written when "
                           f"it ends) and " + ("its partial report needs a local output"
                                               if out.remote else "no trial state was saved "
                                               "yet") + f": resume it with {resume}, and its "
                           "report is written then"], "command line")
    summary = write_partial_report(out.local)
    log.info("%s", (out.local / PARTIAL_DIR / "report.md").read_text().split("\n![")[0].strip())
    log.info("\n%s has not finished: a partial report of %d trials (%d on the front so far) is "
             "in %s; resume the search with %s", out, summary["trials"], summary["front"],
             out.local / PARTIAL_DIR, resume)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from distopt.compress import ArtifactError, decode
    from distopt.data import load_splits
    from distopt.training import evaluate_artifact

    path = Path(args.artifact)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"artifact {path}: {e.strerror}"], "command line") from None
    try:
        # A bad file is refused before the data is loaded; a user's model family is rebuilt
        # only with --trust-code (decoding imports its code).
        decode(data, str(path), trust_code=args.trust_code)
        splits = load_splits(cfg.data)
        result = evaluate_artifact(data, splits, "test", str(path))
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["samples"] = len(splits.y_test)
    result["data"] = cfg.data.name
    print(jsonio.dumps(result), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A search's front in a deployable format (checked on its runtime against PyTorch on the
    test set), or one ``.dopt`` file (written beside it)."""
    from distopt.compress import ArtifactError, decode
    from distopt.export import ExportError
    from distopt.exporters import EXPORTERS, export_front, headers, table

    exporter = EXPORTERS[args.format]
    try:
        exporter.require(args.verify)
    except ImportError as e:
        raise ConfigError([f"--format {args.format}: {e}"], "command line") from None
    target = Path(args.target)
    if target.is_file():
        try:
            data = exporter.export(decode(target.read_bytes(), str(target)), str(target))
        except (ArtifactError, ExportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        out = target.with_suffix(exporter.suffix)
        out.write_bytes(data)
        log.info("%s: %s bytes (.dopt %s bytes)", out, f"{len(data):,}",
                 f"{target.stat().st_size:,}")
        return 0
    if is_uri(args.target):
        raise ConfigError([f"directory: got {args.target!r}; distopt export reads a local "
                           "directory (copy the results down first)"], "command line")
    try:
        entries = export_front(target, exporter, args.trial, args.verify)
    except ExportError as e:
        raise ConfigError([str(e)], "command line") from None
    head = headers(exporter, args.verify)
    rows = table(entries, exporter, args.verify)
    log.info("%s", "\n".join(["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
                             + ["| " + " | ".join(r) + " |" for r in rows]))
    log.info("\n%d %s file(s) in %s; their bytes%s are in %s", len(entries), args.format,
             target / exporter.name, " and the runtime check" if args.verify else "",
             target / M.MANIFEST_FILE)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.check_data:
        check_data(cfg)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print("# config valid" + (": data checked too" if args.check_data else " (the data was "
          "not read; --check-data reads a Parquet data set and checks it too)"),
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distopt", description="Search the accuracy/size Pareto "
                                "front of neural networks on Ray.")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"distopt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML config (default: built-in defaults)")
        sp.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.epochs=3 compress.prune.ratio=0.9")

    t = sub.add_parser("train", help="train, prune, quantize and export one configuration")
    common(t)
    t.add_argument("--output", required=True, help="directory for model.dopt and metrics.json")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("search", help="search the accuracy/size Pareto front (Tune + Optuna)")
    common(s)
    s.add_argument("--output", help="experiment directory (default: results/<name>)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted search")
    s.add_argument("--overwrite", action="store_true", help="replace an existing experiment")
    s.set_defaults(func=cmd_search)

    r = sub.add_parser("report", help="rebuild a search's report from its stored results")
    r.add_argument("directory", help="a search's experiment directory")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("evaluate", help="test accuracy of an artifact file, as JSON")
    e.add_argument("artifact", help="a .dopt file")
    e.add_argument("--trust-code", action="store_true",
                   help="allow a file of your own model family (model.family "
                   "'package.module:Factory') to import and run that factory")
    common(e)
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="export a search's front (or one .dopt file) as ONNX")
    x.add_argument("target", metavar="RESULTS_DIR", help="a search's experiment directory, or "
                   "a .dopt file")
    x.add_argument("--trial", help="export only this trial of the front")
    x.add_argument("--format", choices=sorted(EXPORTERS), default="onnx",
                   help="output format (a registered exporter: distopt.exporters)")
    x.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the ONNX Runtime check against PyTorch on the test set")
    x.set_defaults(func=cmd_export)

    c = sub.add_parser("config", help="print the validated config, or the reference table")
    common(c)
    c.add_argument("--reference", action="store_true", help="print every key and its rule")
    c.add_argument("--check-data", action="store_true",
                   help="also read the data (Parquet) and check it as a search would")
    c.set_defaults(func=cmd_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
