"""The tuner's summary, `tuning.json`: what the report's tuning section reads (never the Optuna storage).

    {"storage": URL, "direction": "maximize" | "minimize", "n_trials": int,
     "studies": [{"study", "arm", "space": {key: Optuna's distribution JSON}, "n_trials", "sampler",
                  "pruner", "trials": {"complete", "pruned", "fail", "not_run"},
                  "best": {"trial", "value", "params"} | null, "final": {...}}, ...]}

The tuner (ablate.tune) writes it into its sweep's folder; each space entry is the text Optuna's
`distribution_to_json` gives, `{"name": "FloatDistribution", "attributes": {"low", "high", "log",
"step"}}` (IntDistribution alike; CategoricalDistribution: `{"choices": [...]}`). This module reads
that text without Optuna, so the analysis stands on files alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

SUMMARY_FILE = "tuning.json"
_KINDS = {"FloatDistribution": "float", "IntDistribution": "int", "CategoricalDistribution": "categorical"}


@dataclass(frozen=True)
class Dimension:
    """One tuned key's search space."""

    kind: str  # "float" | "int" | "categorical"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple[Any, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")


def dimension(encoded: str | Mapping[str, Any]) -> Dimension:
    """A Dimension from Optuna's distribution JSON (the text, or the parsed object); ValueError otherwise."""
    spec = json.loads(encoded) if isinstance(encoded, str) else encoded
    name = spec.get("name") if isinstance(spec, Mapping) else None
    if name not in _KINDS:
        raise ValueError(f"search space entry {encoded!r}: name is not one of {', '.join(_KINDS)}")
    attributes = spec.get("attributes") or {}
    if name == "CategoricalDistribution":
        return Dimension("categorical", choices=tuple(attributes["choices"]))
    return Dimension(_KINDS[name], attributes["low"], attributes["high"], bool(attributes.get("log")),
                     attributes.get("step"))


def describe(space: Dimension) -> str:
    """One line for a search space, e.g. 'float in [1e-05, 0.1], log scale'."""
    if not space.numeric:
        return "one of " + ", ".join(str(c) for c in space.choices)
    text = f"{space.kind} in [{space.low:g}, {space.high:g}]"
    if space.log:
        text += ", log scale"
    if space.step is not None and not (space.kind == "int" and space.step == 1):
        text += f", step {space.step:g}"
    return text
