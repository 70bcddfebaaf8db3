"""The config reference (docs/config.md), generated from the schema (key, default, rule, meaning)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal, Union

from distopt.config.core import Config
from distopt.config.parse import legacy_names, plain

__all__ = ["reference_markdown"]


def reference_markdown() -> str:
    """The config reference table (key, default, rule, meaning) for docs/config.md."""
    rows = ["| key | default | rule | meaning |", "|---|---|---|---|"]
    old_names = legacy_names(Config)

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], key + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rule = f.metadata.get("rule")
            tp = hints[f.name]
            if typing.get_origin(tp) in (Union, types.UnionType):  # Optional[Literal[...]]
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            rule_text = rule.text if rule else (
                "one of " + ", ".join(repr(a) for a in typing.get_args(tp) if a is not None
                                      and a is not type(None))
                if typing.get_origin(tp) is Literal else "")
            dflt = str(plain(default)).replace("|", "\\|")
            if len(dflt) > 40:
                dflt = dflt[:37] + "..."
            doc = f.metadata.get("doc", "") + (f" (old name: `{old_names[key]}`)"
                                               if key in old_names else "")
            rows.append(f"| `{key}` | `{dflt}` | {rule_text} | {doc} |")

    walk(Config, "")
    return "\n".join(rows)
