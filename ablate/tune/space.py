"""Search-space parsing: Hydra sweep overrides -> fixed overrides, Optuna distributions and arms.

The syntax is Hydra's own override grammar, as users know it from the stock Optuna sweeper:

    lr=tag(log, interval(1e-4, 1e-1))   FloatDistribution(log=True)
    x=interval(-5, 5)                   FloatDistribution
    depth=int(interval(1, 8))           IntDistribution
    width=range(32, 129, 32)            IntDistribution(32, 128, step=32)  (Python's range: stop excluded)
    opt=choice(adam, sgd) / opt=adam,sgd CategoricalDistribution

Entries of `hydra.sweeper.params` come first; a command-line override of the same key replaces
them. Overrides that are not sweeps are passed to every job unchanged. The `per_arm` factor's
levels (a choice or range, e.g. `model.ssm=true,false`) are not searched: each level is an arm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    QuotedString,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ablate.tune.errors import TuneConfigError

ALLOWED_TAGS = frozenset({"log"})


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: its Optuna distribution and how to write a value back."""

    name: str  # the config key without +/++ prefix: the Optuna parameter name
    key: str  # the override key as given (with prefix), used when writing overrides
    distribution: BaseDistribution
    literals: tuple[str, ...] = ()  # categorical only: override text of each choice, same order

    def override(self, value: Any) -> str:
        return f"{self.key}={self.literal(value)}"

    def literal(self, value: Any) -> str:
        if isinstance(self.distribution, CategoricalDistribution):
            return self.literals[int(self.distribution.to_internal_repr(value))]
        if isinstance(self.distribution, IntDistribution):
            return str(int(value))
        return repr(float(value))


@dataclass(frozen=True)
class Arm:
    """One level of the per-arm factor (or the single arm of a plain tuning sweep)."""

    label: str | None  # "model.ssm=true"; None when the sweep has no per-arm factor
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepPlan:
    fixed: tuple[str, ...]
    params: tuple[Param, ...]
    arms: tuple[Arm, ...]
    arm_key: str | None = None

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution for p in self.params}

    def param_overrides(self, values: Mapping[str, Any]) -> list[str]:
        return [p.override(values[p.name]) for p in self.params]


def parse_plan(
    params: Mapping[str, Any] | None,
    arguments: Sequence[str],
    per_arm: str | None,
    parser: OverridesParser,
) -> SweepPlan:
    """Split config params and command-line overrides into fixed overrides, a space and arms."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    merged: dict[str, Override] = {}
    for override in parser.parse_overrides(lines):
        merged.pop(_name(override), None)  # a later entry for the same key replaces an earlier one
        merged[_name(override)] = override

    arm_override = merged.pop(per_arm, None) if per_arm else None
    if per_arm and arm_override is None:
        raise TuneConfigError(
            f"hydra.sweeper.per_arm={per_arm}: no levels given; add them as a sweep, "
            f"e.g. {per_arm}=true,false"
        )
    fixed = tuple(o.input_line or "" for o in merged.values() if not o.is_sweep_override())
    space = tuple(_param(o) for o in merged.values() if o.is_sweep_override())
    if not space:
        raise TuneConfigError(
            "hydra.sweeper.params: empty search space; give at least one sweep, "
            "e.g. hydra.sweeper.params.lr='tag(log, interval(1e-4, 1e-1))'"
        )
    arms = _arms(arm_override) if arm_override is not None else (Arm(None),)
    return SweepPlan(fixed=fixed, params=space, arms=arms, arm_key=per_arm)


def _name(override: Override) -> str:
    return override.get_key_element().lstrip("+~")


def _param(override: Override) -> Param:
    value = override.value()
    if getattr(value, "shuffle", False):
        raise TuneConfigError(f"{override.input_line}: shuffle has no meaning in a search space")
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        distribution: BaseDistribution = _interval(override, value)
        return Param(_name(override), override.get_key_element(), distribution)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        return Param(_name(override), override.get_key_element(), _range(override, value))
    _check_tags(override, allowed=frozenset())
    choices = tuple(override.sweep_iterator(transformer=_choice_value))
    literals = tuple(override.sweep_string_iterator())
    return Param(
        _name(override), override.get_key_element(), CategoricalDistribution(choices), literals
    )


def _interval(override: Override, value: IntervalSweep) -> BaseDistribution:
    _check_tags(override, allowed=ALLOWED_TAGS)
    low, high, log = value.start, value.end, "log" in value.tags
    assert low is not None and high is not None
    if not low < high:
        raise TuneConfigError(f"{override.input_line}: interval needs start < end")
    if log and low <= 0:
        raise TuneConfigError(f"{override.input_line}: a log interval needs bounds > 0")
    if isinstance(low, int) and isinstance(high, int):
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _range(override: Override, value: RangeSweep) -> BaseDistribution:
    _check_tags(override, allowed=frozenset())
    values = list(override.sweep_iterator(transformer=Transformer.identity))
    if len(values) < 2 or not value.step or value.step < 0:
        raise TuneConfigError(
            f"{override.input_line}: a range needs a positive step and at least two values"
        )
    if all(isinstance(v, int) for v in values):
        return IntDistribution(values[0], values[-1], step=int(value.step))
    return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))


def _choice_value(element: Any) -> Any:
    """A choice as Optuna stores it: scalars as parsed, quoted text unquoted, the rest as text."""
    if isinstance(element, QuotedString):
        return element.text
    if element is None or isinstance(element, (str, int, float, bool)):
        return element
    return Transformer.str(element)


def _check_tags(override: Override, allowed: frozenset[str]) -> None:
    tags = set(getattr(override.value(), "tags", set()))
    if tags - allowed:
        allowed_text = ", ".join(sorted(allowed)) or "none"
        raise TuneConfigError(
            f"{override.input_line}: unsupported tag(s) {', '.join(sorted(tags - allowed))} "
            f"(allowed here: {allowed_text})"
        )


def _arms(override: Override) -> tuple[Arm, ...]:
    key = override.get_key_element()
    if not override.is_sweep_override():
        label = f"{_name(override)}={_label(override.value(), override.get_value_string())}"
        return (Arm(label, (override.input_line or "",)),)
    if not override.is_discrete_sweep():
        raise TuneConfigError(
            f"{override.input_line}: the per-arm factor needs discrete levels "
            "(a,b or choice(...) or range(...)), not an interval"
        )
    values = override.sweep_iterator(transformer=_choice_value)
    arms = tuple(
        Arm(f"{_name(override)}={_label(value, literal)}", (f"{key}={literal}",))
        for value, literal in zip(values, override.sweep_string_iterator())
    )
    labels = [arm.label for arm in arms]
    if len(set(labels)) != len(labels):
        # Two arms with one label would share one study (and one budget).
        raise TuneConfigError(f"{override.input_line}: a per-arm level is listed twice; "
                              "expected distinct levels")
    return arms


def _label(value: Any, literal: str) -> str:
    # Hydra writes booleans as True/False; records and YAML say true/false.
    return str(value).lower() if isinstance(value, bool) else literal
