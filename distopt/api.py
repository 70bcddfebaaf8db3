"""distopt from Python, for people who drive Ray themselves: :func:`search` runs a search with
the ``distopt search`` command's semantics (the same checks before anything starts, the same
output directory and marker, ``resume``/``overwrite``, joining ``RAY_ADDRESS`` or a Ray instance
already initialized in this process, else starting a local one) and returns its results.

    import distopt
    result = distopt.search("configs/smoke.yaml", "results/smoke")
    result.front              # the Pareto models' rows (val and test accuracy, bytes, ...)
    result.trials             # every trial, child and duplicate, as a pyarrow Table
    distopt.load(result.models[0])

Ray (and the rest of the orchestration) is imported when a search starts, not with distopt.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from distopt.config import (Config, ConfigError, absolute_data_paths, load_config,
                            parse_overrides)
from distopt.results.trials import TRIALS
from distopt.storage import Location
from distopt.workdir import check_location, create_location, replace_location

log = logging.getLogger("distopt")

__all__ = ["SearchInterrupted", "SearchResult", "check_data", "open_location", "search"]


@dataclass(frozen=True)
class SearchResult:
    """A finished search: where it is, every trial, the front and its model files."""

    output: str  # the location given (a directory or a URI)
    directory: Path  # the local directory holding the results (the staging one for a URI)
    trials: pa.Table  # trials.parquet
    summary: dict[str, Any]  # trials, failed, front, hypervolume
    front: list[dict[str, Any]] = field(default_factory=list)  # rows on the front, by size

    @property
    def models(self) -> list[Path]:
        """The front's ``.dopt`` files, smallest first."""
        return [self.directory / r["artifact"] for r in self.front]

    @property
    def report(self) -> Path:
        return self.directory / "report.md"


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped on an interrupt; finished trials are kept and it resumes with
    ``search(config, output, resume=True)`` (or ``distopt search --output ... --resume``)."""

    def __init__(self, output: Location, finished: int, why: str) -> None:
        super().__init__(why)
        self.output, self.finished = output, finished


def check_data(cfg: Config) -> None:
    """A user's data checked on the driver before Ray starts: every problem at once
    (:class:`~distopt.config.ConfigError`); classes missing from training are a warning."""
    from distopt.data import check_parquet_data

    problems, warnings = check_parquet_data(cfg.data)
    for w in warnings:
        log.warning("warning: %s", w)
    if problems:
        raise ConfigError(problems, "data")


def comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict as ``resume`` compares it: local paths spelled one way, so a stored
    config and the same file loaded again compare equal."""
    return {**d, "data": absolute_data_paths(d["data"])}


def stored_public(directory: Path) -> dict[str, Any]:
    """The config an experiment was started with, as written (credentials redacted)."""
    raw = yaml.safe_load((directory / "config.yaml").read_text())
    return comparable(Config.from_dict(raw, str(directory / "config.yaml")).public_dict())


def config_differences(stored: Any, given: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ, as ``key (started with A, now B)``."""
    if isinstance(stored, dict) and isinstance(given, dict):
        return [d for k in sorted(set(stored) | set(given))
                for d in config_differences(stored.get(k), given.get(k), f"{prefix}{k}.")]
    return [] if stored == given else [f"{prefix.rstrip('.')} (started with {stored!r}, now "
                                       f"{given!r})"]


def open_location(spec: str) -> Location:
    """The experiment location ``spec``, or a :class:`~distopt.config.ConfigError` saying why
    it cannot be used (a URI whose filesystem cannot be set up)."""
    try:
        return Location(spec)
    except (OSError, ValueError) as e:
        raise ConfigError([f"output {spec}: {e}"], "search") from None


def unreachable(out: Location, e: OSError) -> str:
    return (f"output {out}: cannot be reached ({str(e).splitlines()[0][:300]}); check the "
            "network, the endpoint (AWS_ENDPOINT_URL) and the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an instance role)")


def _interrupted(cfg: Config, out: Location, e: KeyboardInterrupt) -> SearchInterrupted:
    """The search stopped on ``e``: the study uploaded (a remote output), and what resumes."""
    from distopt.orchestration.progress import upload_study
    from distopt.orchestration.tuning import finished_trials

    if out.remote:
        upload_study(out)
    return SearchInterrupted(out, finished_trials(cfg, out), str(e) or "SIGINT")


def search(config: Config | str | Path | None, output: str | Path | Location | None = None,
           *, overrides: Sequence[str] | Mapping[str, Any] = (), resume: bool = False,
           overwrite: bool = False, verbose: bool = False) -> SearchResult:
    """Run a search of ``config`` (a :class:`~distopt.config.Config`, a YAML path, or None for
    the defaults; ``overrides`` as on the command line) into ``output`` (default
    ``results/<name>``; a directory or a URI such as ``s3://bucket/prefix``).

    Everything is checked before anything starts, and every problem raises one
    :class:`~distopt.config.ConfigError` listing them all, leaving nothing behind: the config,
    the output (an existing one needs ``resume`` or ``overwrite``; ``overwrite`` replaces only
    a directory distopt made), a resumed search's config against the stored one, the data,
    and that one trial fits the cluster. An interrupt (Ctrl-C) stops it cleanly and raises
    :class:`SearchInterrupted`: finished trials are kept and ``resume=True`` continues."""
    if isinstance(config, Config):
        cfg = config.with_overrides(dict(overrides) if isinstance(overrides, Mapping) else
                                    parse_overrides(overrides)) if overrides else config
    else:
        cfg = load_config(config, overrides)
    out = output if isinstance(output, Location) else \
        open_location(str(output if output is not None else Path("results") / cfg.name))
    stage = out.local
    try:
        problems = check_location(out, resume, overwrite)
    except OSError as e:  # a remote location that cannot be reached (network, credentials)
        raise ConfigError([unreachable(out, e)], "search") from None
    if not cfg.search.space:
        problems.append("search.space: got {}; name at least one config key to search")
    if resume and (stage / "config.yaml").exists():
        changed = config_differences(stored_public(stage), comparable(cfg.public_dict()))
        if changed:
            budget = all(c.startswith(("search.num_trials ", "search.time_budget_s "))
                         for c in changed)
            problems.append(f"resume: the config differs from the one {out} was started with "
                            f"in {'; '.join(changed)}; a search resumes with the config it "
                            "started with (leave those keys as they were)" + (
                                ": Ray Tune restores an experiment with its own trial count "
                                "and budget, so a search cannot be extended; start another "
                                "search for more trials" if budget else ""))
    if problems:
        raise ConfigError(problems, "search")
    check_data(cfg)

    from distopt.orchestration.capacity import check_fits
    from distopt.orchestration.collect import collect
    from distopt.orchestration.partial import PARTIAL_DIR
    from distopt.orchestration.run import ensure_ray
    from distopt.orchestration.teacher import ensure_teacher
    from distopt.orchestration.tuning import run_search
    from distopt.results.paths import SearchPaths
    from distopt.results.report import save_config, write_report

    # Pre-flight before anything is written: a cluster that is not there, or one where a trial
    # never fits, leaves no output directory behind (the corrected rerun needs no --overwrite).
    ensure_ray(verbose=verbose)
    problems = check_fits(cfg)
    if problems:  # would wait forever for a placement group: say so now instead
        raise ConfigError(problems, "per-trial resources")
    if overwrite:
        replace_location(out, "search")
    else:
        create_location(out, "search")
    save_config(cfg, stage)
    if out.remote:
        out.write_bytes("config.yaml", (stage / "config.yaml").read_bytes())
    # Tune's own SIGINT handler would end the running trials as errors: an interrupt stops
    # the search cleanly instead, and it resumes.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        # Trials (and their rows in trials.parquet) name the teacher, if they distill.
        cfg = ensure_teacher(cfg, out, SearchPaths(out).train)
        grid = run_search(cfg, out, resume=resume)
    except KeyboardInterrupt as e:
        raise _interrupted(cfg, out, e) from None
    try:
        # Every trial has finished: an interrupt now stops before the results are collected,
        # and --resume (Tune restores the finished experiment) collects them.
        rows = collect(cfg, out, grid)
    except KeyboardInterrupt as e:
        raise _interrupted(cfg, out, e) from None
    if cfg.search.final.active:
        from distopt.orchestration.capacity import concurrency
        from distopt.orchestration.final_stage import run_final_stage
        from distopt.results.trials import write_trials

        try:
            rows = run_final_stage(cfg, out, rows, concurrency(cfg)[0])
            write_trials(rows, stage)
        except KeyboardInterrupt:
            log.info("\nfinal stage interrupted: the front is reported without it (the "
                     "search's results are complete; --resume goes on with the stage)")
    summary = write_report(stage)
    shutil.rmtree(stage / PARTIAL_DIR, ignore_errors=True)  # superseded by the whole report
    if out.remote:
        n = out.upload(stage)
        log.info("uploaded %d result files to %s", n, out)
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["size_bytes"])
    return SearchResult(str(out), stage, pq.read_table(stage / TRIALS), summary, front)

