"""distopt: the accuracy/size Pareto front of neural networks, searched with Ray Tune + Optuna
and trained with Ray Train.

The public surface is small: the config, the data loader, the model builder, the artifact
codec, ``distopt.load`` for deployed models, and the training entry points. Everything else is an implementation detail.
"""

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
    "build_model",
    "decode",
    "encode",
    "load",
    "load_config",
    "load_splits",
    "__version__",
]
