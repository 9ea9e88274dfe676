"""The model front door: one `Family` per model family, found by the variant name (`model.name`).

Everything outside `ablate.models` asks a model only through this interface: build a variant, its
ablation switches and the keys each one makes inert, its sequence-length rule (tokens L and the
threshold tau), its cost facts, and which arm a checkpoint belongs to.

A family is one module of this package that calls `register(Family(...))` at import (the package
imports every module it holds), plus its conf/model/ file(s) and a test. Its settings are declared
once, in its build function's signature:

    def build(name: str, <setting>: <type> = <default>, ..., num_classes: int = 1000,
              image_size: tuple[int, int] = (224, 224)) -> nn.Module

`name` is the variant; each other keyword but the task's two (`TASK_ARGUMENTS`) is a
`model.<setting>` key. A type may be
`Literal[...]` (the choices) or `Annotated[type, rule]` (an ablate.rules helper, e.g. at_least(1)).
`Family.schema` is the dataclass generated from that signature; ablate.config registers it as
conf/model's `<family>_schema`, so the YAML files and `validate` check against it, and `checked`
applies the same rules when Python code calls the build function directly.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING
from torch import nn

from ablate.records import FamilyFacts
from ablate.rules import ConfigError, one_of, schema, settings

__all__ = ['Family', 'Switch', 'TASK_ARGUMENTS', 'checked', 'families', 'family_of', 'register', 'variant_names']

# Keywords of a build function that the task gives, not cfg.model: the classifier's classes (0: a
# headless backbone) and the input size [H, W] the model is evaluated at (for size-dependent models).
TASK_ARGUMENTS = ('num_classes', 'image_size')


@dataclass(frozen=True)
class Switch:
    """A boolean model key that an ablation turns on and off, e.g. MambaOut's `ssm`."""

    key: str  # the model config key
    labels: tuple[str, str]  # arm names for (false, true), e.g. ('no SSM', 'SSM')
    # model keys that change nothing while the switch is false: they leave the cell's identity then,
    # unless one of the boolean keys `kept_by` is true (it reads them, e.g. to match the SSM arm's MACs)
    inert_when_off: tuple[str, ...] = ()
    kept_by: tuple[str, ...] = ()
    # last component of a parameter name that only the true arm has (tells a checkpoint's arm)
    marker: str | None = None

    def label(self, on: bool) -> str:
        return self.labels[bool(on)]


def _settings(build: Callable[..., nn.Module]) -> list[tuple[str, Any, Any, dict]]:
    """The `model.<key>` settings of a build function: every keyword but `name` and the task's."""
    return settings(build, skip=('name', *TASK_ARGUMENTS))


def checked(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """`build` that first checks its arguments against the rules of its own signature (ConfigError,
    one line naming model.<key>), so a direct Python call is held to what the YAML schema allows."""
    rules = {name: meta['rule'] for name, _, _, meta in _settings(build) if 'rule' in meta}
    signature = inspect.signature(build)

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> nn.Module:
        bound = signature.bind(*args, **kwargs)
        for key, value in bound.arguments.items():
            test = rules.get(key)
            if test is not None and not test.test(value):
                raise ConfigError(f'model.{key}={value!r} is not allowed: {test.allowed()}')
        return build(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Family:
    """What the harness may know of a model family.

    build(**model_keys, num_classes=n, image_size=(H, W)) -> nn.Module: a classifier with n classes,
    or a headless backbone with num_classes=0 (which the dense tasks wrap). model_keys are cfg.model's.
    tau(variant) -> int: the token count past which a sequence counts as long (the paper's 6*D).
    seq_len(image_size) -> int: the tokens L of an (H, W) input, on the same map as tau.
    cost_facts(model) -> dict: what a record's `cost` block adds for a built model (e.g. widths used).
    """

    name: str
    variants: tuple[str, ...]
    build: Callable[..., nn.Module]
    switches: tuple[Switch, ...]
    tau: Callable[[str], int]
    seq_len: Callable[[Sequence[int]], int]
    record_keys: tuple[str, ...] = ()  # model keys every record's factors carry besides model.name
    cost_facts: Callable[[nn.Module], dict[str, Any]] = lambda model: {}

    def switch(self, key: str) -> Switch | None:
        return next((s for s in self.switches if s.key == key), None)

    def facts(self) -> FamilyFacts:
        """What a record says of this family (its `family` block): all the report needs of it."""
        return FamilyFacts(self.name, self.record_keys, tuple((s.key, s.labels) for s in self.switches))

    def inert_keys(self, model_cfg: Mapping) -> tuple[str, ...]:
        """Keys of `model_cfg` that the model it configures does not use."""
        return tuple(key for s in self.switches
                     if not model_cfg.get(s.key) and not any(model_cfg.get(k) for k in s.kept_by)
                     for key in s.inert_when_off)

    def arms_of(self, parameter_names: Iterable[str]) -> dict[str, bool]:
        """{switch key: on?} for each switch with a marker, read from a state dict's names."""
        leaves = {name.rsplit('.', 1)[-1] for name in parameter_names}
        return {s.key: s.marker in leaves for s in self.switches if s.marker is not None}

    @functools.cached_property
    def schema(self) -> type:
        """The `model` config dataclass: `name` (one of the variants) and the build function's settings."""
        specs = [('name', str, MISSING, one_of(self.variants)), *_settings(self.build)]
        return schema(f'{self.name.capitalize()}ModelConfig', specs)


_BY_VARIANT: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family`'s variants known to `family_of`; a variant name may belong to one family only."""
    taken = [v for v in family.variants if v in _BY_VARIANT and _BY_VARIANT[v].name != family.name]
    if taken:
        raise ValueError(f'model family {family.name!r}: variant names already registered by another family: '
                         f'{", ".join(taken)}')
    _BY_VARIANT.update({v: family for v in family.variants})
    return family


def variant_names() -> tuple[str, ...]:
    return tuple(_BY_VARIANT)


def families() -> tuple[Family, ...]:
    return tuple({f.name: f for f in _BY_VARIANT.values()}.values())


def family_of(variant: str) -> Family:
    """The family of `model.name`; one-line ValueError listing the registered variants otherwise."""
    try:
        return _BY_VARIANT[variant]
    except (KeyError, TypeError):
        raise ValueError(f"model.name={variant!r} is not a variant; choose from: {', '.join(_BY_VARIANT)}") from None
