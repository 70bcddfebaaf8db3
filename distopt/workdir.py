"""Output directories that distopt creates, replaces and resumes, and nothing else.

``--overwrite`` deletes a directory tree, so it is allowed only on a directory that carries
distopt's marker file (written when distopt created it), and never on the working directory,
one of its parents, the home directory (or its parents) or a filesystem root, marker or not.

``--resume`` unpickles Ray Tune's experiment state (``tune/tuner.pkl``): whoever can write the
results directory can run code as the user who resumes it. A directory (or the Tune state in
it) owned by another user, or writable by group or others, is refused.

Nothing here imports Ray: every check runs before anything expensive starts.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from distopt.storage import Location

__all__ = ["MARKER", "check_location", "check_output", "create_location", "create_output",
           "protected_reason", "replace_location", "replace_output", "untrusted_paths"]

MARKER = ".distopt-output"  # written into every output directory distopt creates


def protected_reason(path: Path) -> str | None:
    """Why ``path`` must never be deleted, or None: a filesystem root, the working directory or
    one of its parents, the home directory or one of its parents."""
    p = path.expanduser().resolve()
    if p == Path(p.anchor):
        return "it is a filesystem root"
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents:
        return "it is the working directory" if p == cwd else \
            "it contains the working directory"
    home = Path.home().resolve()
    if p == home or p in home.parents:
        return "it is the home directory" if p == home else "it contains the home directory"
    return None


def check_output(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """Problems with the output directory for ``train`` or ``search``, found before anything
    starts; an empty list means the command may go on."""
    if resume and overwrite:
        return ["--resume and --overwrite exclude each other"]
    exists_nonempty = out.is_dir() and any(out.iterdir())
    if out.exists() and not out.is_dir():
        return [f"output {out} exists and is not a directory"]
    if resume:
        if not out.exists():
            return [f"--resume: output directory {out} does not exist"]
        return untrusted_paths(out)
    if not exists_nonempty:
        return []
    if not overwrite:
        return [f"output directory {out} exists and is not empty: pass --resume to continue "
                "it or --overwrite to replace it"]
    reason = protected_reason(out)
    if reason:
        return [f"--overwrite: refusing to delete {out}: {reason}"]
    if not (out / MARKER).is_file():
        return [f"--overwrite: refusing to delete {out}: it has no {MARKER} file, so distopt "
                "did not create it; choose another --output or remove it yourself"]
    return []


def create_output(out: Path, kind: str) -> None:
    """Create ``out`` (if needed) and mark it as distopt's, so a later ``--overwrite`` may
    replace it."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"created_by": "distopt", "kind": kind}) + "\n")


def replace_output(out: Path, kind: str) -> None:
    """Delete a marked output directory and create it afresh. Re-checks the rules of
    :func:`check_output` right before deleting (they are cheap) so no caller can skip them."""
    if out.exists():
        reason = protected_reason(out)
        if reason or not (out / MARKER).is_file():
            raise PermissionError(f"refusing to delete {out}: "
                                  f"{reason or f'it has no {MARKER} file'}")
        shutil.rmtree(out)
    create_output(out, kind)


def _unsafe(path: Path, uid: int) -> str | None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} " \
               f"(mode {stat.filemode(st.st_mode)})"
    return None


def untrusted_paths(out: Path) -> list[str]:
    """Problems that make resuming ``out`` unsafe: the results directory, its ``tune/`` state
    directory or any file in it owned by another user or writable by group or others (Ray
    unpickles that state on resume)."""
    uid = os.getuid()
    paths = [out]
    tune = out / "tune"
    if tune.is_dir():
        paths.append(tune)
        paths += sorted(p for p in tune.iterdir() if p.is_file() or p.is_symlink())
    problems = []
    for p in paths:
        why = _unsafe(p, uid)
        if why:
            problems.append(f"--resume: {p} {why}; Ray unpickles the experiment state there, so "
                            "whoever can write it can run code as you. Resume only results you "
                            "trust: fix the owner or mode (chmod go-w) if you do")
    return problems


# -------------------------------------------------------------------- local or remote outputs


def check_location(loc: Location, resume: bool, overwrite: bool) -> list[str]:
    """:func:`check_output` for a local or remote experiment location. A remote one has no
    working or home directory to protect and no owner or mode bits to check (its bucket's
    access policy decides who may write it); the marker rule is the same."""
    if not loc.remote:
        return check_output(Path(loc.root), resume, overwrite)
    if resume and overwrite:
        return ["--resume and --overwrite exclude each other"]
    if resume:
        return [] if loc.exists() else [f"--resume: output {loc} does not exist"]
    if not loc.nonempty():
        return []
    if not overwrite:
        return [f"output {loc} exists and is not empty: pass --resume to continue it or "
                "--overwrite to replace it"]
    if not loc.is_file(MARKER):
        return [f"--overwrite: refusing to delete {loc}: it has no {MARKER} file, so distopt "
                "did not create it; choose another --output or remove it yourself"]
    return []


def create_location(loc: Location, kind: str) -> None:
    create_output(loc.local, kind)
    if loc.remote and not loc.is_file(MARKER):
        loc.write_bytes(MARKER, (loc.local / MARKER).read_bytes())


def replace_location(loc: Location, kind: str) -> None:
    if not loc.remote:
        replace_output(Path(loc.root), kind)
        return
    if loc.exists():
        if not loc.is_file(MARKER):
            raise PermissionError(f"refusing to delete {loc}: it has no {MARKER} file")
        loc.delete()
    if loc.local.exists():
        shutil.rmtree(loc.local)
    create_location(loc, kind)
