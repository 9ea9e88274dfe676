"""What a setting allows: `Rule`s, and the helpers that make them (field metadata of a schema).

The typed schemas (ablate/config.py's dataclasses, and the schemas generated below from each model
family's build signature and each Task constructor, through `typing.Annotated`) carry these; `ablate.config.validate` and `ablate.models.family.checked` apply
them, so a setting's allowed values are written once, next to the setting.
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable

from omegaconf import MISSING


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


# --- schemas from signatures -----------------------------------------------------------------------
# A setting is declared once, as a keyword of the function (or constructor) that takes it:
#     d_state: Annotated[int, at_least(1)] = 16        scan: Literal["cross", "raster"] = "cross"
# `settings` reads those into (key, type, default, field metadata), and `schema` makes the typed
# dataclass that Hydra's ConfigStore holds (conf/ YAML files extend it; `validate` applies the rules).


def settings(fn: Callable[..., Any], skip: Iterable[str] = ()) -> list[tuple[str, Any, Any, dict]]:
    """(key, OmegaConf type, default or MISSING, field metadata) of each keyword of `fn` but `skip`,
    *args and **kwargs."""
    skip = set(skip)
    hints = typing.get_type_hints(fn, include_extras=True)
    out = []
    for name, parameter in inspect.signature(fn).parameters.items():
        if name in skip or name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        hint, metadata = hints.get(name, Any), {}
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            metadata = next((e for e in extras if isinstance(e, dict) and "rule" in e), {})
        if typing.get_origin(hint) is typing.Literal:  # OmegaConf types Literal as its values' type, plus the rule
            choices = typing.get_args(hint)
            hint, metadata = type(choices[0]), one_of(choices)
        default = MISSING if parameter.default is parameter.empty else parameter.default
        out.append((name, _omegaconf_type(hint), default, metadata))
    return out


def constructor_settings(cls: type, skip: Iterable[str] = ()) -> list[tuple[str, Any, Any, dict]]:
    """`settings` of a class's constructor and, while it passes **kwargs on, its bases' (bases first)."""
    groups = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        groups.append(settings(init, skip))
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    seen, out = set(), []
    for group in reversed(groups):
        for spec in group:
            if spec[0] not in seen:
                seen.add(spec[0])
                out.append(spec)
    return out


def schema(name: str, specs: Iterable[tuple[str, Any, Any, dict]]) -> type:
    """A dataclass with one field per (key, type, default, metadata); sequence defaults become lists."""
    fields = []
    for key, hint, default, metadata in specs:
        if isinstance(default, (list, tuple)):
            spec = field(default_factory=functools.partial(list, default), metadata=metadata)
        else:
            spec = field(default=default, metadata=metadata)
        fields.append((key, hint, spec))
    return make_dataclass(name, fields)


def _omegaconf_type(hint: Any) -> Any:
    """The type OmegaConf can hold: `X | None` -> Optional[X], Sequence[X] / tuple[X, ...] -> List[X]."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        inner = _omegaconf_type(kept[0]) if len(kept) == 1 else Any
        return typing.Optional[inner] if len(kept) < len(args) else inner
    if origin in (list, tuple, collections.abc.Sequence):
        return typing.List[args[0] if args else Any]
    return hint
