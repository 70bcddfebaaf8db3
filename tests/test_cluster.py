"""The shipped Ray cluster-launcher files: validated offline by Ray's own schema, and the
on-prem file run for real (`ray up` -> `ray submit` -> `ray down`) over SSH against this
machine's own sshd.

Only the cloud provider cannot run here: cluster.yaml is validated, not launched."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from _raytools import free_port, new_token, port_in_use, ray_processes, wait_for
from conftest import ROOT

CLUSTER_FILES = [ROOT / "cluster.yaml", ROOT / "configs" / "clusters" / "local.yaml"]


def _validate(raw: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(raw)))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_pass_ray_validation_and_are_secure(path):
    raw = yaml.safe_load(path.read_text())
    _validate(raw)
    head = " ".join(raw["head_start_ray_commands"])
    workers = " ".join(raw["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "RAY_AUTH_MODE=token ray start --address" in workers
    # Every node gets the token, readable by its owner only, and installs this checkout.
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert raw["file_mounts"]["~/distopt"] == "."
    assert "chmod 600 ~/.ray/auth_token" in raw["setup_commands"]
    assert any("pip install" in c and "~/distopt" in c for c in raw["setup_commands"])


def test_cloud_cluster_shape():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials never land on the head
    gpu = raw["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


# ------------------------------------------------------------------ ray up / submit / down


class _Snapshot:
    """Remembers files in the home directory that the launcher writes, and puts them back."""

    PATHS = ("~/.ray/auth_token", "~/.bashrc", "~/.profile", "~/ray_bootstrap_config.yaml",
             "~/ray_bootstrap_key.pem", "~/search.py", "~/.ssh")

    def __init__(self) -> None:
        self.saved: dict[Path, tuple[bytes, int] | None] = {}
        self.ssh_dir_existed = Path("~/.ssh").expanduser().exists()
        for p in self.PATHS:
            path = Path(p).expanduser()
            if path.is_file():
                self.saved[path] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
            elif not path.exists():
                self.saved[path] = None

    def restore(self) -> None:
        for path, kept in self.saved.items():
            if kept is None:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()
            else:
                if not path.is_file() or path.read_bytes() != kept[0]:
                    path.write_bytes(kept[0])
                os.chmod(path, kept[1])


def _login_shells_use_this_python() -> None:
    """The launcher runs every command (and `ray submit` runs `python search.py`) in a login
    shell over SSH, whose PATH does not know the virtualenv (or pyenv version) this test runs
    in, so distopt would not import there. On a real node the setup commands install distopt
    into the node's own Python; here the "node" is this machine, so its login shells are
    pointed at this interpreter's bin directory (both files are restored afterwards). The
    line goes last: earlier lines (pyenv's, for one) prepend their own directories."""
    line = f'\nexport PATH="{Path(sys.executable).parent}:$PATH"  # distopt test_cluster\n'
    for rc in ("~/.profile", "~/.bashrc"):
        path = Path(rc).expanduser()
        path.write_text((path.read_text() if path.exists() else "") + line)


def _sshd(tmp: Path) -> tuple[subprocess.Popen, int, Path]:
    """sshd on 127.0.0.1 with its own keys, config and authorized key (nothing in ~/.ssh)."""
    port = free_port()
    key = tmp / "id_ed25519"
    for k in (key, tmp / "host_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    (tmp / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    cfg = tmp / "sshd_config"
    cfg.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {tmp / 'host_ed25519'}",
        f"PidFile {tmp / 'sshd.pid'}", f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
        "StrictModes no", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", ""]))
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(cfg), "-E", str(tmp / "sshd.log")])
    if not wait_for(lambda: port_in_use(port), 20, 0.2):
        proc.kill()
        pytest.fail(f"sshd did not start: {(tmp / 'sshd.log').read_text()}")
    return proc, port, key


@pytest.mark.slow
@pytest.mark.integration
def test_ray_up_submit_down_over_ssh(tmp_path):
    """configs/clusters/local.yaml pointed at 127.0.0.1: the shipped start commands, token auth
    and file mounts, `ray submit` of distopt/search.py, the results, `ray down`.

    Differences from a user's run, all forced by running against this machine itself: sshd
    listens on a free port (reached through `auth.ssh_proxy_command`, since Ray never passes
    `-p`); the checkout is mounted into a temporary directory instead of ~/distopt; and the
    setup commands check that distopt and Ray import instead of `pip install -e` (which would
    repoint this machine's installed distopt at that temporary copy)."""
    missing = [b for b in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "ray")
               if shutil.which(b) is None]
    if missing:
        pytest.skip(f"needs {missing} (.ci/run installs openssh-server and rsync)")
    if os.geteuid() != 0:
        pytest.skip("runs sshd with PermitRootLogin for the current user: needs root")
    others = ray_processes()
    if others:  # `ray stop` in the start commands and in `ray down` would kill them
        pytest.skip(f"other Ray processes are running ({len(others)}): `ray stop` would kill "
                    f"them, e.g. {others[0]}")
    busy = [p for p in (6379, 8265, 8080) if port_in_use(p)]
    if busy:
        pytest.skip(f"ports {busy} used by the shipped start commands are taken")

    tmp = Path(tempfile.mkdtemp(prefix="dup", dir="/tmp"))
    snapshot = _Snapshot()
    _login_shells_use_this_python()
    run_sshd = not Path("/run/sshd").exists()
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    sshd, port, key = _sshd(tmp)
    raw = yaml.safe_load(CLUSTER_FILES[1].read_text())
    remote = tmp / "remote"
    raw["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    raw["auth"] = {"ssh_user": "root", "ssh_private_key": str(key),
                   "ssh_proxy_command": f"ssh -i {key} -o StrictHostKeyChecking=no "
                                        f"-o UserKnownHostsFile=/dev/null -p {port} "
                                        f"-W %h:{port} root@%h"}
    new_token(tmp / "token")
    raw["file_mounts"] = {str(remote / "distopt"): str(ROOT),
                          "~/.ray/auth_token": str(tmp / "token")}
    raw["setup_commands"] = [c for c in raw["setup_commands"] if "pip install" not in c] + [
        "python -c 'import distopt, ray'"]
    cluster = tmp / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(raw))
    _validate(raw)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TMPDIR"] = str(tmp / "launcher")  # the launcher's caches and locks
    (tmp / "launcher").mkdir()
    out = tmp / "results"
    times: dict[str, float] = {}

    def ray(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        p = subprocess.run(["ray", *args], env=env, capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
        times[args[0]] = time.perf_counter() - t0
        return p

    try:
        up = ray("up", "-y", "--no-config-cache", str(cluster))
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert stat.S_IMODE(Path("~/.ray/auth_token").expanduser().stat().st_mode) == 0o600
        sub = ray("submit", str(cluster), str(ROOT / "distopt" / "search.py"), "--",
                  "--config", str(remote / "distopt" / "configs" / "smoke.yaml"),
                  "--output", str(out), "search.num_trials=2")
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        trials = pq.read_table(out / "trials.parquet").to_pylist()
        assert len(trials) == 2 and all(t["status"] == "COMPLETE" for t in trials)
        assert (out / "report.md").exists()
        down = ray("down", "-y", str(cluster))
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
        assert wait_for(lambda: not ray_processes(), 30), ray_processes()
        for name, p in (("up", up), ("submit", sub), ("down", down)):  # shown with -s
            last = [ln for ln in p.stdout.splitlines() if ln.strip()][-2:] + \
                [ln for ln in p.stderr.splitlines() if ln.strip()][-1:]
            print(f"ray {name}: {times[name]:.0f} s; ends with:", *last, sep="\n    ")
    finally:
        if ray_processes():
            ray("down", "-y", str(cluster), timeout=120)
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(10)
        snapshot.restore()
        if run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
