"""distopt: the accuracy/size Pareto front of neural networks, searched with Ray Tune + Optuna
and trained with Ray Train.

The public surface is small: the config, the data loader, the model builder (a built-in family
or your own: ``ModelSpec.external``), the artifact codec, compression methods as plug-ins
(``distopt.compress.register``), ``distopt.load`` for deployed models, and ``distopt.search``
for a whole search from Python. Everything else is an implementation detail.
"""

from distopt.api import SearchInterrupted, SearchResult, search
from distopt.compress import ArtifactError, decode, encode
from distopt.config import Config, ConfigError, load_config
from distopt.data import DataError, load_splits
from distopt.deploy import load
from distopt.models import ModelSpec, build_model

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "Config",
    "ConfigError",
    "DataError",
    "ModelSpec",
    "SearchInterrupted",
    "SearchResult",
    "build_model",
    "decode",
    "encode",
    "load",
    "load_config",
    "load_splits",
    "search",
    "__version__",
]
