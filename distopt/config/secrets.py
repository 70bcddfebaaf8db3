"""Credentials in the config: a password in ``search.storage`` is redacted wherever results
are written, and ``${ENV_VAR}`` references are filled in only where the study opens."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from distopt.config.rules import ConfigError

if TYPE_CHECKING:
    from distopt.config.core import Config

__all__ = ["ENV_REF", "REDACTED", "expand_env_refs", "redact_url", "storage_url"]

REDACTED = "***"
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)(?P<pw>[^@/?#]*)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|pwd|secret|token|"
                           r"access_key|secret_key)=)(?P<value>[^&#]*)")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def redact_url(url: str) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://user:***@host/...``, and secret query
    parameters (``?password=...``) likewise. ``${ENV_VAR}`` references are no secret and stay."""
    def keep_refs(value: str) -> str:
        return value if ENV_REF.fullmatch(value) or not value else REDACTED

    url = _URL_PASSWORD.sub(lambda m: m["head"] + keep_refs(m["pw"]) + "@", url)
    return _QUERY_SECRET.sub(lambda m: m["key"] + keep_refs(m["value"]), url)


def expand_env_refs(value: str, key: str) -> str:
    """Replace ``${NAME}`` with the environment variable ``NAME`` (the way to keep passwords out
    of configs and results); an unset one is a :class:`ConfigError` naming ``key``."""
    missing = [n for n in ENV_REF.findall(value) if n not in os.environ]
    if missing:
        raise ConfigError([f"{key}: environment variable(s) {', '.join(missing)} are not set"])
    return ENV_REF.sub(lambda m: os.environ[m.group(1)], value)


def storage_url(cfg: Config) -> str | None:
    """The Optuna storage URL with ``${ENV_VAR}`` references filled in (driver only)."""
    s = cfg.search.storage
    return expand_env_refs(s, "search.storage") if s else None
