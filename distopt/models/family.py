"""Model families as plug-ins: a :class:`Family` turns the config into a :class:`ModelSpec`
and a spec into a module; :data:`FAMILIES` holds the registered ones by name, and
:func:`family_of` finds the family of a config's ``model.family`` or a spec's ``family`` (a
``package.module:Factory`` path is the user's own family, :mod:`.external`). Everything that
needs a model asks here, so adding a family adds a module and its registration, not a branch
in the training run, the artifact or the search.

What a family brings beside its spec and module:

- ``channels_last``: whether the channels-last memory format pays (conv families);
- structured pruning and the ONNX graph are per architecture (``distopt.compress.pruning``,
  ``distopt.export``), keyed by module class: a family whose modules are new ones gets
  unstructured pruning and no ONNX export until those learn them (the config checks say so
  for a user's family).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import nn

from distopt.models.spec import ModelSpec
from distopt.user_models import is_factory_path

if TYPE_CHECKING:
    from distopt.config import Config

__all__ = ["FAMILIES", "Family", "build_model", "family_of", "register_family",
           "spec_from_config"]


class Family:
    """The protocol: subclasses set ``name`` and implement :meth:`spec` and :meth:`build`."""

    name: ClassVar[str] = ""
    channels_last: ClassVar[bool] = False

    def spec(self, cfg: Config) -> ModelSpec:
        """The architecture the config's ``model`` section (with ``data`` and
        ``regularization.dropout``) describes."""
        raise NotImplementedError

    def build(self, spec: ModelSpec) -> nn.Module:
        """A freshly initialized module of the spec, carrying it as ``.spec``."""
        raise NotImplementedError


FAMILIES: dict[str, Family] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: add a family to the registry under its ``name`` (taken names refused).
    A built-in family's name must also be one of the config's ``model.family`` choices."""
    if not cls.name or cls.name in FAMILIES:
        raise ValueError(f"model family name {cls.name!r} is empty or registered already")
    FAMILIES[cls.name] = cls()
    return cls


def family_of(name: str) -> Family:
    """The family registered as ``name``; a ``package.module:Factory`` path (or a spec's
    ``external``) is the user's own family."""
    return FAMILIES["external" if is_factory_path(name) else name]


def spec_from_config(cfg: Config) -> ModelSpec:
    return family_of(cfg.model.family).spec(cfg)


def build_model(spec: ModelSpec) -> nn.Module:
    return family_of(spec.family).build(spec)
