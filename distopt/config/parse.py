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

__all__ = ["absolute_data_paths", "build_section", "canonical_key", "canonical_mappings",
           "canonical_raw", "coerce", "describe", "field_info_in", "get_dotted", "legacy_names",
           "legacy_raw",
           "parse_overrides", "plain", "set_dotted"]


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


# Old names: a section class may declare ``ALIASES: ClassVar[dict[str, str]]``, each an old key
# of the section -> where it lives now (dotted, relative to the section). Old configs, overrides,
# search spaces and stored results are read through them; everything written uses the new names.


def _aliases(cls: Any) -> dict[str, str]:
    return getattr(cls, "ALIASES", {}) if dataclasses.is_dataclass(cls) else {}


def canonical_raw(cls: type, raw: Mapping[str, Any], prefix: str = "",
                  problems: list[str] | None = None) -> dict[str, Any]:
    """A raw section (nested dicts) with its old keys moved to where they live now; an old
    key given beside its new one is a problem (the two could disagree)."""
    out = dict(raw)
    for old, new in _aliases(cls).items():
        if old not in out:
            continue
        value = out.pop(old)
        head, _, leaf = new.rpartition(".")
        node = out
        for part in head.split(".") if head else ():
            node[part] = dict(node[part]) if isinstance(node.get(part), Mapping) else \
                node.get(part, {})
            node = node[part]
        if not isinstance(node, dict):  # a wrong type where a section goes: reported later
            continue
        if leaf in node and problems is not None:
            problems.append(f"{prefix}.{old}: the old name of {prefix}.{new}, which is also "
                            "given; keep one".lstrip("."))
        node.setdefault(leaf, value)
    return out


def canonical_key(root: type, dotted: str) -> str:
    """A dotted config key with old names replaced by the new ones (``compress.prune_ratio``
    -> ``compress.prune.ratio``); keys that are no config key come back as they were."""
    cls: Any = root
    parts = dotted.split(".")
    out: list[str] = []
    while parts:
        part = parts.pop(0)
        if part in _aliases(cls):
            parts = _aliases(cls)[part].split(".") + parts
            continue
        out.append(part)
        fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) \
            else set()
        if part not in fields:
            return ".".join(out + parts)
        cls = typing.get_type_hints(cls)[part]
    return ".".join(out)


def legacy_names(cls: Any, prefix: str = "") -> dict[str, str]:
    """Every renamed key of the tree: its dotted name now -> its old one."""
    out = {f"{prefix}{new}": f"{prefix}{old}" for old, new in _aliases(cls).items()}
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.update(legacy_names(hints[f.name], f"{prefix}{f.name}."))
    return out


def legacy_raw(cls: type, raw: Mapping[str, Any], _top: bool = True) -> dict[str, Any]:
    """The inverse of :func:`canonical_raw` over the whole tree, dotted keys of the mappings
    keyed by them (``search.space``, ...) included: the layout before the aliases' new names
    (where a seed must not change with the layout)."""
    hints = typing.get_type_hints(cls)
    out = {k: legacy_raw(hints[k], v, False) if k in hints and dataclasses.is_dataclass(hints[k])
           and isinstance(v, Mapping) else v for k, v in raw.items()}
    for old, new in _aliases(cls).items():
        head, _, leaf = new.rpartition(".")
        node = out
        for part in head.split(".") if head else ():
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            out[old] = node.pop(leaf)
    for k in list(out):
        if isinstance(out[k], dict) and not out[k] and k in hints and \
                dataclasses.is_dataclass(hints[k]):
            del out[k]  # a section emptied into old keys
    if _top:
        old_names = legacy_names(cls)
        for mapping in DOTTED_MAPPINGS:
            head, _, leaf = mapping.rpartition(".")
            try:
                node = get_dotted(out, head)
            except (KeyError, TypeError):
                continue
            if isinstance(node, dict) and isinstance(node.get(leaf), Mapping):
                node[leaf] = {old_names.get(k, k): v for k, v in node[leaf].items()}
    return out


def build_section(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix}: got {describe(raw)}; must be a mapping")
        raw = {}
    raw = canonical_raw(cls, raw, prefix, problems)
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


def canonical_mappings(root: type, raw: dict[str, Any], problems: list[str]) -> None:
    """Old names replaced in the keys of the mappings keyed by dotted config keys
    (``search.space``, ...), in place and in order; an old key beside its new one is a
    problem."""
    for mapping in DOTTED_MAPPINGS:
        try:
            node = get_dotted(raw, mapping)
        except (KeyError, TypeError):
            continue
        if not isinstance(node, dict):
            continue
        renamed: dict[str, Any] = {}
        for key, value in node.items():
            new = canonical_key(root, key) if isinstance(key, str) else key
            if new in renamed or (new != key and new in node):
                problems.append(f"{mapping}.{key}: the old name of {new}, which is also given; "
                                "keep one")
                continue
            renamed[new] = value
        node.clear()
        node.update(renamed)


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
