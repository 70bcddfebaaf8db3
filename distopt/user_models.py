"""Model families from the user's own code: ``model.family: "package.module:Factory"``.

A factory is any callable ``factory(options, in_shape, num_classes) -> torch.nn.Module``:
``options`` is the config's ``model`` section as a dict (plus ``dropout`` from
``regularization.dropout``), ``in_shape`` the shape of one input as the network sees it and
``num_classes`` the label count. Its ``Conv2d``, ``Linear``, ``Embedding`` and recurrent layers
are pruned, quantized, clustered and encoded like the built-in families' (global magnitude
pruning only: structured pruning rewrites built-in architectures).

The artifact records the factory's import path, so decoding such a file imports and runs user
code. A path is *trusted* in a process once the user named it (a config that names it was
loaded) or said so (``trust_code=True``, ``--trust-code``); decoding an untrusted one is refused
with the reason. The module is imported as Python's ``-m`` finds modules: from ``sys.path``, then
from the current directory (which Ray also puts on its workers' path).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Callable

__all__ = ["FACTORY_PATH", "UntrustedCode", "is_factory_path", "load_factory", "trust",
           "trusted"]

FACTORY_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_TRUSTED: set[str] = set()


class UntrustedCode(ValueError):
    """Building this model would import code nobody trusted in this process."""


def is_factory_path(family: Any) -> bool:
    return isinstance(family, str) and bool(FACTORY_PATH.match(family))


def trust(path: str) -> None:
    _TRUSTED.add(path)


def trusted(path: str) -> bool:
    return path in _TRUSTED


def load_factory(path: str) -> Callable[..., Any]:
    """The callable at ``package.module:Name``. Raises :class:`UntrustedCode` for a path not
    trusted in this process, ImportError or AttributeError (with what was looked for) if it
    cannot be found, TypeError if it is not callable."""
    if not trusted(path):
        raise UntrustedCode(f"the model is built by user code {path!r}; building it imports and "
                            "runs that code: pass trust_code=True (CLI: --trust-code) if you "
                            "trust its source")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name is None or not module_name.startswith(e.name) or cwd in sys.path:
            raise
        sys.path.insert(0, cwd)  # as `python -m` does, and as Ray does on its workers
        module = importlib.import_module(module_name)
    factory = getattr(module, attr, None)
    if factory is None:
        raise AttributeError(f"module {module_name!r} ({getattr(module, '__file__', '?')}) has "
                             f"no attribute {attr!r}")
    if not callable(factory):
        raise TypeError(f"{path} is a {type(factory).__name__}, not a callable that builds a "
                        "model")
    return factory
