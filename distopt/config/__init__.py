"""The configuration: the schema as data (:mod:`.sections` and
:mod:`.search_section`, with :mod:`.rules`), the one
:class:`Config` object built and validated from YAML and overrides (:mod:`.core`, over
:mod:`.parse` and the cross-key :mod:`.checks`), the meaning of a search-space entry
(:mod:`.space`), credentials (:mod:`.secrets`) and the generated reference (:mod:`.reference`).
Nothing here imports torch or Ray."""

from distopt.config.core import Config, field_info, load_config
from distopt.config.parse import absolute_data_paths, parse_overrides
from distopt.config.reference import reference_markdown
from distopt.config.rules import ConfigError
from distopt.config.secrets import REDACTED, expand_env_refs, redact_url, storage_url
from distopt.config.sections import (BUILT_IN_FAMILIES, CLICKS_CATEGORICAL, CLICKS_LABEL,
                                     CLICKS_NUMERIC, SIGNALS_CLASSES, SIGNALS_SHAPE,
                                     AugmentConfig, ClusterConfig, CompressConfig, DataConfig,
                                     ModelConfig, PruneConfig, QuantizeConfig, RowPruneConfig,
                                     RegularizationConfig, TrainConfig)
from distopt.config.labels import bits_text
from distopt.config.presets import PRESETS
from distopt.config.search_section import SearchConfig
from distopt.config.checks import trial_epochs

__all__ = [
    "AugmentConfig",
    "BUILT_IN_FAMILIES",
    "CLICKS_CATEGORICAL",
    "CLICKS_LABEL",
    "CLICKS_NUMERIC",
    "ClusterConfig",
    "CompressConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PRESETS",
    "PruneConfig",
    "RowPruneConfig",
    "QuantizeConfig",
    "REDACTED",
    "RegularizationConfig",
    "SIGNALS_CLASSES",
    "SIGNALS_SHAPE",
    "SearchConfig",
    "TrainConfig",
    "absolute_data_paths",
    "bits_text",
    "expand_env_refs",
    "field_info",
    "load_config",
    "parse_overrides",
    "redact_url",
    "reference_markdown",
    "storage_url",
    "trial_epochs",
]
