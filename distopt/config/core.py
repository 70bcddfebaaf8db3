"""The one typed, frozen configuration object, built from YAML plus dotted ``key=value`` overrides.

Every component receives a :class:`Config` (or the plain dict of one, across Ray processes).
Validation runs before Ray starts and reports every problem at once: each names the dotted key,
the value received and the rule broken, the way Optuna's errors do.

Each field declares its rule next to its default, so the rule text shown in an error is also
the rule documented in the config reference in docs/config.md (``distopt config --reference``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from distopt.config.checks import cross_checks
from distopt.config.parse import (absolute_data_paths, build_section, canonical_key,
                                  canonical_mappings, describe, field_info_in, parse_overrides,
                                  plain, set_dotted)
from distopt.config.rules import SLUG, ConfigError, Rule, option
from distopt.config.secrets import redact_url
from distopt.config.presets import PRESETS
from distopt.config.sections import (AugmentConfig, CompressConfig, DataConfig,
                                     ModelConfig, RegularizationConfig, TrainConfig)
from distopt.config.search_section import SearchConfig
from distopt.config.space import check_space

__all__ = ["Config", "field_info", "load_config"]


@dataclass(frozen=True)
class Config:
    """The whole configuration of a trial or a search. Frozen: derive variants with
    :meth:`with_overrides`."""

    name: str = option("distopt", Rule(lambda v: SLUG.fullmatch(v) is not None,
                                     "must be 1-100 letters, digits, '_', '-' or '.', starting "
                                     "with a letter or digit"),
                     "experiment name (results/<name> by default)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serializable nested dict (tuples become lists)."""
        return plain(dataclasses.asdict(self))

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with credentials redacted: what results files and logs may hold."""
        d = self.to_dict()
        if d["search"]["storage"]:
            d["search"]["storage"] = redact_url(d["search"]["storage"])
        return d

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> Config:
        """Build and validate; raises :class:`ConfigError` listing every problem."""
        return _build(raw, source)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A new validated config with dotted keys replaced (used by the search per trial)."""
        raw = self.to_dict()
        problems: list[str] = []
        for key, value in overrides.items():
            set_dotted(raw, canonical_key(Config, key), value, problems)
        if problems:
            raise ConfigError(problems)
        return _build(raw, "config")

    def trial_config(self) -> Config:
        """The config every search trial starts from: this one with ``search.trial_overrides``."""
        if not self.search.trial_overrides:
            return self
        # The result has no trial_overrides left, so applying them is not repeated.
        return self.with_overrides({**self.search.trial_overrides, "search.trial_overrides": {}})


def field_info(dotted: str) -> tuple[Any, Rule | None] | None:
    """Type and rule of a dotted leaf key of :class:`Config` (old names too), or None if no
    such key exists."""
    return field_info_in(Config, canonical_key(Config, dotted))


def _build(raw: Mapping[str, Any], source: str, check_paths: bool = False) -> Config:
    """Validate everything; ``check_paths`` also checks that local data paths exist (on the
    machine where the user typed them, not in workers that may run elsewhere)."""
    problems: list[str] = []
    raw = copy.deepcopy(dict(raw)) if isinstance(raw, Mapping) else raw
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        preset = raw["model"].get("preset")
        if preset in PRESETS:
            raw["model"] = {**PRESETS[preset], **raw["model"]}
    if isinstance(raw, dict):
        canonical_mappings(Config, raw, problems)  # old names in search.space etc.
    cfg = build_section(Config, raw, "", problems)
    cross_checks(cfg, problems, check_paths)
    check_space(Config, cfg.search.space, problems)
    for key in cfg.search.trial_overrides:
        if field_info(key) is None or key.startswith("search."):
            problems.append(f"search.trial_overrides.{key}: not a config key a trial can set")
    if not problems and cfg.search.trial_overrides:
        try:
            cfg.trial_config()
        except ConfigError as e:
            problems += [f"search.trial_overrides: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | Path | None, overrides: Sequence[str] | Mapping[str, Any] = ()
                ) -> Config:
    """Load a YAML file (or defaults if ``path`` is None), apply overrides, validate all."""
    raw: Any = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError([f"config file {path} does not exist"], source) from None
        except IsADirectoryError:
            raise ConfigError([f"config file {path} is a directory; name a YAML file (e.g. "
                               "configs/mnist_cnn.yaml)"], source) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"config file {path} cannot be read: "
                               f"{getattr(e, 'strerror', None) or e}"], source) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"top level: got {describe(raw)}; must be a mapping"], source)
    ov = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    problems: list[str] = []
    for key, value in ov.items():
        set_dotted(raw, canonical_key(Config, key), value, problems)
    if problems:
        raise ConfigError(problems, source)
    if isinstance(raw.get("data"), dict):
        raw["data"] = absolute_data_paths(raw["data"])
    return _build(raw, source, check_paths=True)
