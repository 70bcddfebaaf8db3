"""Where an experiment lives: a local directory, or a URI of any pyarrow filesystem (``s3://``,
``gs://``, ``abfs://``, ``hdfs://``) that every node of a cluster can reach.

Ray Tune and Ray Train write their state, checkpoints and artifacts straight to the location
(their ``storage_path``), so a trial restarted on another node, or a resumed search, finds them.
The driver's own files (the Optuna SQLite study, the report) are made in a local staging
directory and uploaded; ``--resume`` and ``distopt report`` download them first. Credentials and
endpoints come from the filesystem's usual environment (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` or an instance role).
Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["Location", "is_uri", "read_file"]


def is_uri(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def read_file(spec: str) -> bytes:
    """The bytes of a file given as a local path or a URI of any pyarrow filesystem."""
    if is_uri(spec):
        fs, path = pafs.FileSystem.from_uri(spec)
        with fs.open_input_stream(path) as f:
            return f.read()
    return Path(os.path.expanduser(spec.removeprefix("file://"))).read_bytes()


class Location:
    """An experiment directory, local or remote, with the few file operations distopt needs."""

    def __init__(self, spec: str | Path) -> None:
        spec = str(spec)
        self.spec = spec.rstrip("/") or spec
        self.remote = is_uri(spec)
        if self.remote:
            self.fs, self.root = pafs.FileSystem.from_uri(self.spec)
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(os.path.expanduser(spec.removeprefix("file://")))

    def __str__(self) -> str:
        return self.spec if self.remote else self.root

    @property
    def local(self) -> Path:
        """The local directory: the location itself, or a stable staging directory for a
        remote one (the same URI maps to the same directory, so a resumed search on the same
        driver machine finds its study even if it never reached the remote copy)."""
        if not self.remote:
            return Path(self.root)
        digest = hashlib.sha256(self.spec.encode()).hexdigest()[:16]
        return Path(os.path.expanduser("~/.cache/distopt/staging")) / digest

    def uri(self, *parts: str) -> str:
        """A ``storage_path`` for Ray: the URI (remote) or absolute path (local) of a child."""
        base = self.spec if self.remote else self.root
        return "/".join([base, *parts]) if parts else base

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type == pafs.FileType.File

    def nonempty(self) -> bool:
        if not self.exists():
            return False
        sel = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
        return bool(self.fs.get_file_info(sel))

    def read_bytes(self, path: str) -> bytes:
        """A file by its path within this location's filesystem (as Ray reports checkpoint
        paths: absolute locally, ``bucket/key`` on S3)."""
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_rel(self, rel: str) -> bytes:
        """A file by its path relative to this location."""
        return self.read_bytes(self._path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        parent = self._path(rel).rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self._path(rel)) as f:
            f.write(data)

    def delete(self) -> None:
        if self.exists():
            self.fs.delete_dir_contents(self.root, missing_dir_ok=True)

    def download(self, rels: list[str], into: Path) -> list[str]:
        """Copy the named files (or every file under a named directory) that exist into
        ``into``; returns what was copied."""
        got = []
        for rel in rels:
            info = self.fs.get_file_info(self._path(rel))
            if info.type == pafs.FileType.Directory:
                sel = pafs.FileSelector(self._path(rel), recursive=True)
                files = [i.path for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
            elif info.type == pafs.FileType.File:
                files = [info.path]
            else:
                continue
            for path in files:
                name = path[len(self.root) + 1:]
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                (into / name).write_bytes(self.read_bytes(path))
                got.append(name)
        return got

    def upload(self, local_dir: Path, skip: tuple[str, ...] = ()) -> int:
        """Copy every file under ``local_dir`` (except top-level names in ``skip``) here."""
        n = 0
        for p in sorted(local_dir.rglob("*")):
            rel = p.relative_to(local_dir).as_posix()
            if p.is_file() and rel.split("/", 1)[0] not in skip:
                self.write_bytes(rel, p.read_bytes())
                n += 1
        return n
