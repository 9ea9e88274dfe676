"""The model front door: one `Family` per model family, found by the variant name (`model.name`).

Everything outside `ablate.models` asks a model only through this interface: build a variant, its
ablation switches and the keys each one makes inert, its sequence-length rule (tokens L and the
threshold tau), and which arm a checkpoint belongs to. A family's module calls `register(Family(...))`
at import; a new family is that module (imported by ablate/models/__init__.py), its conf/model/
files and a test.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ['Family', 'Switch', 'family_of', 'register', 'variant_names']


@dataclass(frozen=True)
class Switch:
    """A boolean model key that an ablation turns on and off, e.g. MambaOut's `ssm`."""

    key: str  # the model config key
    labels: tuple[str, str]  # arm names for (false, true), e.g. ('no SSM', 'SSM')
    # model keys that change nothing while the switch is false: they leave the cell's identity then
    inert_when_off: tuple[str, ...] = ()
    # last component of a parameter name that only the true arm has (tells a checkpoint's arm)
    marker: str | None = None

    def label(self, on: bool) -> str:
        return self.labels[bool(on)]


@dataclass(frozen=True)
class Family:
    """What the harness may know of a model family.

    build(**model_keys, num_classes=n) -> nn.Module: a classifier with n classes, or a headless
    backbone with num_classes=0 (which the dense tasks wrap). model_keys are cfg.model's keys.
    tau(variant) -> int: the token count past which a sequence counts as long (the paper's 6*D).
    seq_len(image_size) -> int: the tokens L of an (H, W) input, on the same map as tau.
    """

    name: str
    variants: tuple[str, ...]
    build: Callable[..., nn.Module]
    switches: tuple[Switch, ...]
    tau: Callable[[str], int]
    seq_len: Callable[[Sequence[int]], int]
    record_keys: tuple[str, ...] = ()  # model keys every record's factors carry besides model.name

    def switch(self, key: str) -> Switch | None:
        return next((s for s in self.switches if s.key == key), None)

    def inert_keys(self, model_cfg: Mapping) -> tuple[str, ...]:
        """Keys of `model_cfg` that the model it configures does not use."""
        return tuple(key for s in self.switches if not model_cfg.get(s.key) for key in s.inert_when_off)

    def arms_of(self, parameter_names: Iterable[str]) -> dict[str, bool]:
        """{switch key: on?} for each switch with a marker, read from a state dict's names."""
        leaves = {name.rsplit('.', 1)[-1] for name in parameter_names}
        return {s.key: s.marker in leaves for s in self.switches if s.marker is not None}


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


def family_of(variant: str) -> Family:
    """The family of `model.name`; one-line ValueError listing the registered variants otherwise."""
    try:
        return _BY_VARIANT[variant]
    except (KeyError, TypeError):
        raise ValueError(f"model.name={variant!r} is not a variant; choose from: {', '.join(_BY_VARIANT)}") from None
