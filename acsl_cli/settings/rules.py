"""Value rules: each checks one value and raises a one-line ``ConfigError`` naming its key.

A rule also knows one other valid value (``rule.example(v)``), so tests can change every
declared field without a hand-kept list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from acsl_cli.errors import ConfigError

#: Larger integers are refused: torch seeds and counts are 64-bit.
INT_MAX = 2**63 - 1


def _fail(key: str, value: Any, what: str) -> None:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise ConfigError(f"{key}={shown}: must be {what}")


@dataclass(frozen=True)
class Rule:
    """``check(key, value)`` raises; ``example(value)`` returns another valid value."""

    check: Callable[[str, Any], None]
    example: Callable[[Any], Any]

    def __call__(self, key: str, value: Any) -> None:
        self.check(key, value)


def integer(lo: int | None = None, hi: int | None = None, null: bool = False) -> Rule:
    top = INT_MAX if hi is None else hi
    # no upper bound given: say so, not the machine's largest integer
    rng = ("" if lo is None else f" >= {lo}" if hi is None else f" in [{lo}, {top}]")

    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(key, v, f"an integer{rng}" + (" or null" if null else ""))
        if (lo is not None and v < lo) or v > top or v < -INT_MAX:
            _fail(key, v, f"an integer{rng}")

    def example(v: Any) -> Any:
        base = lo if lo is not None else 0
        return base + 1 if v != base + 1 and base + 1 <= top else base

    return Rule(check, example)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, null: bool = False) -> Rule:
    lo_s = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
    hi_s = f"{'<' if hi_open else '<='} {hi}" if hi is not None else ""
    what = "a finite number" + (f" {lo_s}" if lo_s else "") + (
        f"{' and' if lo_s else ''} {hi_s}" if hi_s else "")

    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(key, v, what + (" or null" if null else ""))
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            _fail(key, v, what)
        if lo is not None and (v <= lo if lo_open else v < lo):
            _fail(key, v, what)
        if hi is not None and (v >= hi if hi_open else v > hi):
            _fail(key, v, what)

    def example(v: Any) -> Any:
        a = float(lo) if lo is not None else 0.0
        b = hi if hi is not None else a + 2.0
        mid = (a + b) / 2
        return mid if mid != v else (a + mid) / 2

    return Rule(check, example)


def _bool_check(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        _fail(key, v, "true or false")


boolean = Rule(_bool_check, lambda v: not v)


def text(null: bool = False) -> Rule:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if not isinstance(v, str) or not v or "\0" in v:
            _fail(key, v, "a non-empty string" + (" or null" if null else ""))

    return Rule(check, lambda v: "other" if v != "other" else "another")


def choice(*options: str) -> Rule:
    def check(key: str, v: Any) -> None:
        if v not in options:
            _fail(key, v, "one of " + ", ".join(options))

    return Rule(check, lambda v: next(o for o in options if o != v))


def choice_in(options: Mapping[str, Any]) -> Rule:
    """One of a registry's names, read when a value is checked (the registry fills as its
    classes are declared: ``declare.kind``)."""

    def check(key: str, v: Any) -> None:
        if not isinstance(v, str) or v not in options:
            _fail(key, v, "one of " + ", ".join(options))

    return Rule(check, lambda v: next(o for o in options if o != v))


def list_of(rule: Rule, nonempty: bool = False, null: bool = False) -> Rule:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if not isinstance(v, (list, tuple)) or (nonempty and not v):
            _fail(key, v, "a " + ("non-empty " if nonempty else "") + "list"
                  + (" or null" if null else ""))
        for i, x in enumerate(v):
            rule(f"{key}[{i}]", x)

    def example(v: Any) -> Any:
        first = v[0] if v else None
        return [rule.example(first)]

    return Rule(check, example)


def one_or_list(rule: Rule) -> Rule:
    """One value, or a non-empty list of distinct values, each passing ``rule``."""

    def check(key: str, v: Any) -> None:
        if isinstance(v, (list, tuple)):
            if not v or len(set(map(repr, v))) != len(v):
                _fail(key, v, "a value or a non-empty list of distinct values")
            for i, x in enumerate(v):
                rule(f"{key}[{i}]", x)
        else:
            rule(key, v)

    return Rule(check, lambda v: rule.example(v[0] if isinstance(v, (list, tuple)) else v))


def anything() -> Rule:
    """No check: values whose owner validates them (a loss's parameters)."""
    return Rule(lambda key, v: None, lambda v: v)
