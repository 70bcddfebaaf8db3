"""The vocabulary of the config schema: a rule (a predicate and the sentence that states it),
the field declaration that keeps a rule and a doc beside each default, and the one error every
check raises, listing every problem at once."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["ConfigError", "Rule", "SLUG", "in_range", "option"]

SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # no '.', '..', separators, dotfiles


class ConfigError(ValueError):
    """A configuration broke one or more rules; ``problems`` lists each, one line per problem."""

    def __init__(self, problems: Sequence[str] | str, source: str = "config") -> None:
        # A str is one problem (Ray re-raises remote exceptions from their message alone).
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}"
                         if not isinstance(problems, str) else problems)



@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    text: str


def in_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")

    def check(v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        if hi is not None and (v >= hi if hi_open else v > hi):
            return False
        return True

    return Rule(check, "must be " + " and ".join(parts))


def option(default: Any, rule: Rule | None = None, doc: str = "") -> Any:
    meta = {"rule": rule, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)
