"""Helpers for tests that start Ray clusters as separate processes."""

from __future__ import annotations

import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ray_processes(marker: str = "") -> list[str]:
    """'pid cmdline' of running Ray daemons (raylet, gcs_server), optionally only those whose
    command line contains ``marker``. Scans /proc: psutil is not a dependency."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("raylet" in cmd or "gcs_server" in cmd) and marker in cmd:
            found.append(f"{d.name} {cmd[:120]}")
    return found


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a listening TCP socket on ``port`` (from /proc/net)."""
    out = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                if width == 8:
                    out.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))
                    out.add(socket.inet_ntop(socket.AF_INET6, raw))
    return out


def new_token(path: Path) -> str:
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def http_get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def wait_for(predicate, timeout: float, interval: float = 1.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


NOISE = ("Traceback", "core_worker.cc", "Deprecat")


def assert_quiet(stderr: str) -> None:
    """What a normal distopt run must not show on stderr: tracebacks, Ray's C++ error lines,
    deprecation warnings."""
    noisy = [line for line in stderr.splitlines() if any(n in line for n in NOISE)]
    assert noisy == [], stderr[-3000:]


def _parent(pid: int) -> int:
    """The parent pid of ``pid`` (0 if it is gone), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, then ppid


def own_processes(marker: bytes) -> list[int]:
    """Pids of this process's descendants (the Ray instance a test started in-process: its
    raylet and workers) whose command line holds ``marker``; never anyone else's."""
    me = os.getpid()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker not in (proc / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        pid = ancestor = int(proc.name)
        for _ in range(64):  # up the tree to this process, or to init
            ancestor = _parent(ancestor)
            if ancestor in (0, 1) or ancestor == me:
                break
        if ancestor == me and pid != me:
            found.append(pid)
    return found
