"""Output directories: what --overwrite may delete and what --resume may trust.

Every case runs in temporary directories (the working directory and HOME moved there), and
the refusals go through the real CLI, which checks before Ray is imported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from distopt.cli import main
from distopt.config import ConfigError, load_config, redact_url, storage_url
from distopt.orchestration.collect import _trial_config_json
from distopt.results.report import save_config
from distopt.workdir import (MARKER, check_output, create_output, protected_reason,
                             replace_output, untrusted_paths)

from conftest import CONFIGS


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd = tmp/work (with a file and a results/ experiment in it), HOME = tmp/home."""
    work, home = tmp_path / "work", tmp_path / "home"
    (work / "results" / "old").mkdir(parents=True)
    (work / "precious.txt").write_text("keep me")
    create_output(work / "results" / "old", "search")
    home.mkdir()
    (home / "notes.txt").write_text("keep me too")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    return tmp_path


def _untouched(sandbox: Path) -> bool:
    return ((sandbox / "work" / "precious.txt").read_text() == "keep me" and
            (sandbox / "home" / "notes.txt").exists() and
            (sandbox / "work" / "results" / "old" / MARKER).exists())


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "a\\b", ""])
def test_unsafe_experiment_names_are_config_errors(sandbox, name, capsys):
    rc = main(["search", "--config", str(CONFIGS / "smoke.yaml"), f"name={name!r}",
               "--overwrite"])
    assert rc == 2
    assert "name: got" in capsys.readouterr().err
    assert _untouched(sandbox)


@pytest.mark.parametrize("output, reason", [
    (".", "it is the working directory"),
    ("..", "it contains the working directory"),
    ("~", "it is the home directory"),
])
def test_overwrite_refuses_the_working_and_home_directories(sandbox, output, reason, capsys):
    # Even a planted marker does not make them deletable.
    (sandbox / "work" / MARKER).write_text("{}")
    (sandbox / "home" / MARKER).write_text("{}")
    rc = main(["train", "--output", str(Path(output).expanduser()), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and reason in err, err
    assert _untouched(sandbox)


def test_filesystem_root_is_protected(sandbox):
    assert protected_reason(Path("/")) == "it is a filesystem root"
    assert check_output(Path("/"), resume=False, overwrite=True) == [
        "--overwrite: refusing to delete /: it is a filesystem root"]
    assert protected_reason(sandbox / "work" / "results" / "old") is None


def test_overwrite_refuses_a_directory_distopt_did_not_create(sandbox, capsys):
    mine = sandbox / "work" / "mydata"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    rc = main(["train", "--output", str(mine), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and f"has no {MARKER} file, so distopt did not create it" in err
    assert (mine / "thesis.tex").exists()


def test_overwrite_replaces_a_marked_directory(sandbox):
    old = sandbox / "work" / "results" / "old"
    (old / "trials.parquet").write_text("stale")
    assert check_output(old, resume=False, overwrite=True) == []
    replace_output(old, "search")
    assert sorted(p.name for p in old.iterdir()) == [MARKER]


def test_replace_output_rechecks_before_deleting(sandbox):
    """A caller that skips check_output still cannot delete the working directory."""
    (sandbox / "work" / MARKER).write_text("{}")
    with pytest.raises(PermissionError, match="it is the working directory"):
        replace_output(sandbox / "work", "train")
    unmarked = sandbox / "work" / "results" / "unmarked"
    unmarked.mkdir()
    with pytest.raises(PermissionError, match=f"it has no {MARKER} file"):
        replace_output(unmarked, "train")
    assert _untouched(sandbox) and unmarked.exists()


def test_outputs_distopt_creates_carry_the_marker(tmp_path):
    create_output(tmp_path / "a" / "b", "train")
    assert (tmp_path / "a" / "b" / MARKER).is_file()


# ---------------------------------------------------------------- --resume trusts only you


def _experiment(root: Path) -> Path:
    out = root / "exp"
    (out / "tune").mkdir(parents=True)
    (out / "tune" / "tuner.pkl").write_bytes(b"\x80\x04N.")
    for p in (out, out / "tune"):
        p.chmod(0o755)
    (out / "tune" / "tuner.pkl").chmod(0o644)
    return out


@pytest.mark.parametrize("target, mode, says", [
    ("", 0o777, "writable by others"),
    ("tune", 0o775, "writable by its group"),
    ("tune/tuner.pkl", 0o666, "writable by others"),
])
def test_resume_refuses_directories_others_can_write(tmp_path, target, mode, says, capsys):
    out = _experiment(tmp_path)
    assert untrusted_paths(out) == []
    (out / target).chmod(mode)
    problems = untrusted_paths(out)
    assert len(problems) == 1 and str(out / target).rstrip("/") in problems[0] and \
        says in problems[0], problems
    rc = main(["search", "--output", str(out), "--resume"])
    assert rc == 2 and "whoever can write it can run code as you" in capsys.readouterr().err


@pytest.mark.skipif(os.getuid() != 0, reason="changing a file's owner needs root")
def test_resume_refuses_state_owned_by_another_user(tmp_path):
    out = _experiment(tmp_path)
    os.chown(out / "tune" / "tuner.pkl", 65534, 65534)
    problems = untrusted_paths(out)
    assert len(problems) == 1 and "tuner.pkl is owned by uid 65534" in problems[0]


def test_resume_refuses_a_symlinked_state_file(tmp_path):
    out = _experiment(tmp_path)
    (out / "tune" / "tuner.pkl").unlink()
    (tmp_path / "elsewhere.pkl").write_bytes(b"x")
    (out / "tune" / "tuner.pkl").symlink_to(tmp_path / "elsewhere.pkl")
    assert "is a symbolic link" in untrusted_paths(out)[0]


# ---------------------------------------------------------------- no secrets in results


SECRET_URL = "postgresql://optuna:hunter2@db.internal:5432/studies"


def test_storage_credentials_are_redacted():
    assert redact_url(SECRET_URL) == "postgresql://optuna:***@db.internal:5432/studies"
    assert redact_url("mysql://u:p@h/d?password=x&charset=utf8") == \
        "mysql://u:***@h/d?password=***&charset=utf8"
    assert redact_url("postgresql://u:${PGPASS}@h/d") == "postgresql://u:${PGPASS}@h/d"
    assert redact_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"


def test_results_files_never_hold_the_storage_password(tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", [f"search.storage={SECRET_URL}"])
    assert cfg.search.storage == SECRET_URL  # the driver keeps it to open the study
    save_config(cfg, tmp_path)
    written = (tmp_path / "config.yaml").read_text()
    assert "hunter2" not in written and "optuna:***@db.internal" in written
    assert "hunter2" not in _trial_config_json(cfg, {"model.channels": 4})
    assert "hunter2" not in str(cfg.public_dict())


def test_storage_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("DISTOPT_TEST_PW", "s3cret")
    cfg = load_config(CONFIGS / "smoke.yaml", ["search.storage=postgresql://u:${DISTOPT_TEST_PW}@h/d"])
    assert storage_url(cfg) == "postgresql://u:s3cret@h/d"
    assert "s3cret" not in str(cfg.public_dict())
    monkeypatch.delenv("DISTOPT_TEST_PW")
    with pytest.raises(ConfigError, match="DISTOPT_TEST_PW are not set"):
        load_config(CONFIGS / "smoke.yaml", ["search.storage=postgresql://u:${DISTOPT_TEST_PW}@h/d"])


def test_resuming_from_a_redacted_config_asks_for_the_real_url(tmp_path, capsys):
    cfg = load_config(CONFIGS / "smoke.yaml", [f"search.storage={SECRET_URL}"])
    out = tmp_path / "exp"
    create_output(out, "search")
    save_config(cfg, out)
    rc = main(["search", "--output", str(out), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "its password was redacted" in err and "hunter2" not in err
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["search"]["storage"] == redact_url(SECRET_URL)


def test_resume_with_the_same_config_file_is_accepted(tmp_path, capsys):
    """The stored config spells ~ and relative paths out; the same --config must still match
    (and a different one must not)."""
    cfg = load_config(CONFIGS / "smoke.yaml")
    out = tmp_path / "exp"
    create_output(out, "search")
    save_config(cfg, out)
    from distopt.api import config_differences, comparable, stored_public

    assert stored_public(out) == comparable(load_config(CONFIGS / "smoke.yaml").public_dict())
    changed = comparable(load_config(CONFIGS / "smoke.yaml", ["train.epochs=3"]).public_dict())
    assert stored_public(out) != changed
    assert config_differences(stored_public(out), changed) == ["train.epochs (started with 1, now 3)"]
    # Resuming without --config loads the stored file, whose ~ load_config expands.
    assert stored_public(out) == comparable(load_config(out / "config.yaml").public_dict())
