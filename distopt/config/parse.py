"""From YAML values to typed sections: coercion to each field's annotation with its rule
checked, dotted keys read and written in raw nested dicts, ``key=value`` overrides, data paths
spelled one way. Generic over the dataclass tree it is given; knows no section by name."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from distopt.config.rules import ConfigError, Rule

__all__ = ["absolute_data_paths", "build_section", "coerce", "describe", "field_info_in",
           "get_dotted", "parse_overrides", "plain", "set_dotted"]


def plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def describe(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Coerce a YAML value to the annotated type, or record why it can't be."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key, problems)
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        problems.append(f"{key}: got {describe(value)}; must be one of "
                        f"{', '.join(repr(a) for a in args)}")
        return args[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: got {describe(value)}; must be true or false")
        return False
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key}: got {describe(value)}; must be an integer")
        return 0
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{key}: got {describe(value)}; must be a number")
        return 0.0
    if tp is str:
        if isinstance(value, str):
            return value
        problems.append(f"{key}: got {describe(value)}; must be a string")
        return ""
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: got {describe(value)}; must be a list")
            return ()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]", problems)
                         for i, v in enumerate(value))
        if len(value) != len(args):
            problems.append(f"{key}: got {describe(value)}; must have {len(args)} items")
            return tuple(value)
        return tuple(coerce(v, a, f"{key}[{i}]", problems)
                     for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: got {describe(value)}; must be a mapping")
            return {}
        return dict(value)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def build_section(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix}: got {describe(raw)}; must be a mapping")
        raw = {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"{prefix}.{k}: unknown key ({hint}known: "
                            f"{', '.join(sorted(names))})".lstrip("."))
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}".lstrip(".")
        if f.name not in raw:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = build_section(hints[f.name], raw[f.name], key, problems)
            continue
        before = len(problems)
        value = coerce(raw[f.name], hints[f.name], key, problems)
        rule: Rule | None = f.metadata.get("rule")
        if len(problems) == before and rule is not None and value is not None:
            try:
                ok = rule.check(value)
            except TypeError:
                ok = False
            if not ok:
                problems.append(f"{key}: got {describe(raw[f.name])}; {rule.text}")
        kwargs[f.name] = value
    return cls(**kwargs)


def field_info_in(root: type, dotted: str) -> tuple[Any, Rule | None] | None:
    """Type and rule of a dotted leaf key of the dataclass tree ``root``, or None if no such
    key exists."""
    cls: Any = root
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            return (None if dataclasses.is_dataclass(tp) else (tp, fields[part].metadata.get("rule")))
        cls = tp
    return None


def get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return node


# Mappings whose own keys are dotted config keys: an override through one of them names a
# single entry (search.space.model.channels={choices: [4, 8]} sets the entry "model.channels").
DOTTED_MAPPINGS = ("search.space", "search.trial_overrides", "train.teacher_overrides")


def set_dotted(raw: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    for mapping in DOTTED_MAPPINGS:
        if key.startswith(mapping + ".") and len(key) > len(mapping) + 1:
            parts = [*mapping.split("."), key[len(mapping) + 1:]]
            break
    else:
        parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            problems.append(f"{key}: {part} is not a section")
            return
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "augment.rotation=0"]`` -> ``{"train.epochs": 3, ...}``.

    Values are parsed as YAML, so numbers, booleans, ``null`` and ``[lists]`` work."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r}: must be key=value with a dotted key")
            continue
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            problems.append(f"override {item!r}: value is not valid YAML ({e.__class__.__name__})")
    if problems:
        raise ConfigError(problems, "overrides")
    return out


def absolute_data_paths(data: Mapping[str, Any]) -> dict[str, Any]:
    """A data section with local paths spelled one way: ``~`` and relative paths expanded
    against the directory the command runs in (Ray's workers run elsewhere), URLs untouched.
    Also how a stored config and the same file loaded again are compared on ``--resume``."""
    out = dict(data)
    for key in ("path", "test_path", "cache_dir"):
        v = out.get(key)
        if isinstance(v, str) and v and "://" not in v:
            out[key] = os.path.abspath(os.path.expanduser(v))
    return out
