"""The estimators' allowed parameter values, declared once and checked at ``fit``.

Each rule knows how to describe what it expects, so every refusal reads
``Expected <name> <rule>, found <value>; <fix>.``
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A real or integral number in an interval (``None`` bounds are open-ended)."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # 'both' | 'left' | 'right' | 'neither'

    def accepts(self, value: Any) -> bool:
        """True if ``value`` is of the right kind and inside the interval."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if not np.isfinite(value) and not (self.high is None and value == np.inf):
            return False
        low_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        high_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        return low_ok and high_ok

    def describe(self) -> str:
        """Human description, e.g. 'a float > 0'."""
        name = "an int" if self.kind is int else "a float"
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}")
        return f"{name} {' and '.join(parts)}".strip()


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        """True if ``value`` is one of the options (strings compared exactly)."""
        return any(value is v or (type(value) is type(v) and value == v) for v in self.values)

    def describe(self) -> str:
        """Human description."""
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class NoneValue:
    """The value None."""

    def accepts(self, value: Any) -> bool:
        """True for None."""
        return value is None

    def describe(self) -> str:
        """Human description."""
        return "None"


@dataclass(frozen=True)
class ArrayLike:
    """An array of explicit values (e.g. given centers)."""

    def accepts(self, value: Any) -> bool:
        """True for objects with a 2-D ``shape``."""
        return hasattr(value, "shape") and len(value.shape) == 2

    def describe(self) -> str:
        """Human description."""
        return "a 2-D array"


@dataclass(frozen=True)
class RandomState:
    """None, an int seed or a numpy Generator/RandomState."""

    def accepts(self, value: Any) -> bool:
        """True for valid ``random_state`` values."""
        return value is None or (
            isinstance(value, (numbers.Integral, np.random.Generator, np.random.RandomState))
            and not isinstance(value, bool)
        )

    def describe(self) -> str:
        """Human description."""
        return "None, an int seed or a numpy random generator"


def validate_params(owner: str, params: dict[str, Any], table: dict[str, tuple[Any, ...]]) -> None:
    """Check every parameter against its rules; raise a ValueError naming the first offender.

    Parameters
    ----------
    owner : str
        Class name, for the message.
    params : dict
        ``get_params(deep=False)``.
    table : dict
        Parameter name -> rules (any may accept).
    """
    for name, rules in table.items():
        value = params[name]
        if not any(rule.accepts(value) for rule in rules):
            expected = " or ".join(rule.describe() for rule in rules)
            raise ValueError(
                f"Expected {name} of {owner} to be {expected}, found {value!r}; "
                f"set a valid value, e.g. {owner}({name}={_example(rules)!r})."
            )


def _example(rules: tuple[Any, ...]) -> Any:
    for rule in rules:
        if isinstance(rule, Options):
            return rule.values[0]
        if isinstance(rule, Interval):
            low = rule.low if rule.low is not None else 0
            return rule.kind(low + 1) if rule.kind is int else float(max(low, 0) + 1.0)
    return None


def switch_value(
    name: str, given: str | None, env_var: str, allowed: tuple[str, ...], default: str, fix: str
) -> str:
    """An implementation switch: the argument ``name`` (``given``), else ``$env_var``, else
    ``default``; refused with ``fix`` (what to set it to) when not in ``allowed``.

    Examples
    --------
    >>> switch_value("mode", None, "RFMDIST_UNSET_SWITCH", ("a", "b"), "a", "set it to 'a'.")
    'a'
    """
    import os

    chosen = given if given is not None else os.environ.get(env_var) or default
    if chosen not in allowed:
        source = name if given is not None else env_var
        raise ValueError(f"Expected {source} in {allowed}, found {chosen!r}; {fix}")
    return chosen
