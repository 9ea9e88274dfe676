"""What a setting allows: `Rule`s, and the helpers that make them (field metadata of a schema).

The typed schemas (ablate/config.py, and each model family's build signature through
`typing.Annotated`) carry these; `ablate.config.validate` and `ablate.models.family.checked` apply
them, so a setting's allowed values are written once, next to the setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(ValueError):
    """A setting outside what is allowed. The message is one line: key=value, then what is allowed."""


@dataclass(frozen=True)
class Rule:
    """What a setting allows: `test(value)` is True for an allowed value; `allowed()` says it in words
    (a function, so that a list owned by another module is read from its owner when needed)."""

    test: Callable[[Any], bool]
    allowed: Callable[[], str]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def rule(test: Callable[[Any], bool], allowed: str | Callable[[], str], optional: bool = False) -> dict:
    """Field metadata holding a Rule; `optional` also allows null."""
    words = allowed if callable(allowed) else (lambda: allowed)
    if optional:
        return {"rule": Rule(lambda v: v is None or test(v), lambda: f"{words()}, or null")}
    return {"rule": Rule(test, words)}


def at_least(low: float, optional: bool = False) -> dict:
    return rule(lambda v: is_number(v) and v >= low, f"a number >= {low}", optional)


def above(low: float, optional: bool = False) -> dict:
    return rule(lambda v: is_number(v) and v > low, f"a number > {low}", optional)


def within(low: float, high: float) -> dict:
    return rule(lambda v: is_number(v) and low <= v <= high, f"a number in [{low}, {high}]")


def one_of(choices: tuple | Callable[[], tuple], optional: bool = False) -> dict:
    listed = choices if callable(choices) else (lambda: choices)
    return rule(lambda v: v in listed(), lambda: "one of: " + ", ".join(map(str, listed())), optional)


def hw_pair(key: str, value: Any, minimum: int = 1, multiple: int = 1) -> tuple[int, int]:
    """(H, W) of an [H, W] setting (one int: a square), each an int >= minimum and a multiple of
    `multiple`; ConfigError otherwise, one line naming `key` (e.g. task.image_size) and the value."""
    hw = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        hw = list(hw)
    except TypeError:
        hw = None
    if hw is None or len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                                             and v % multiple == 0 for v in hw):
        shown = list(value) if isinstance(value, tuple) else value
        rest = f", multiples of {multiple}" if multiple > 1 else ""
        raise ConfigError(f"{key}={shown!r} is not allowed: [H, W], two integers >= {minimum}{rest}")
    return hw[0], hw[1]


def size_pair(minimum: int = 1) -> dict:
    def test(value: Any) -> bool:
        try:
            return isinstance(value, list) and bool(hw_pair("", value, minimum))
        except ConfigError:
            return False

    return rule(test, f"[H, W]: two integers >= {minimum}")


def ordered_pair(low: float, high: float) -> dict:
    return rule(lambda v: isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v)
                and low < v[0] <= v[1] <= high, f"[min, max] with {low} < min <= max <= {high}")


def channel_values(positive: bool) -> dict:
    return rule(lambda v: isinstance(v, list) and len(v) == 3 and all(is_number(x) and (x > 0 or not positive) for x in v),
                "three numbers, one per RGB channel" + (", each > 0" if positive else ""))
