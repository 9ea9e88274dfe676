"""The report's tuning section: space, budget per arm, best parameters, and edge warnings.

    tuning_section("sqlite:////.../optuna.db", ["s[model.ssm=true]", "s[model.ssm=false]"]) -> str

Everything comes from the storage: the space and budget from the studies' `ablate.*` attrs
(written by the sweeper), the counts and best trials from the trials. An arm's best value lying
within 5% of an interval bound (measured in log space for log parameters) gets a warning: the
optimum may lie outside the space, and the comparison then depends on where the bounds were put.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from ablate.secrets import MASK, redact
from ablate.tune import study as st
from ablate.tune.errors import TuneConfigError
from ablate.tune.storage import load_study

EDGE_FRACTION = 0.05


def tuning_section(storage_url: str, study_names: list[str]) -> str:
    """Markdown for the report: one table for the space, one row per arm, then warnings."""
    if MASK in storage_url:
        # The records hold a raw URL's redacted form; opening it would fail, or create an empty
        # SQLite/journal file at the masked path.
        raise TuneConfigError(
            f"tuning.storage={storage_url}: the records hold this URL redacted; pass the storage "
            "as hydra.sweeper.storage=env:NAME or file:PATH so that the report can open it"
        )
    studies = [load_study(storage_url, name) for name in study_names]
    spaces = {s.study_name: _space(s) for s in studies}
    # No heading: the report that embeds this section writes its own.
    lines = [f"Studies in `{redact(storage_url)}`; direction: {_direction(studies)}.", ""]
    lines += _space_table(next(iter(spaces.values()), {}))
    lines += ["", "| study | arm | budget | complete | pruned | failed | best value | best trial "
              "| best parameters |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_arm_row(s) for s in studies]
    warnings = _fairness_warnings(studies, spaces) + [
        w for s in studies for w in _edge_warnings(s, spaces[s.study_name])
    ]
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _space(study: optuna.Study) -> dict[str, BaseDistribution]:
    encoded = study.user_attrs.get(st.SPACE)
    if encoded is None:
        raise ValueError(
            f"study {study.study_name!r} has no {st.SPACE} attr: it was not created by the "
            "optuna_fair sweeper"
        )
    return st.decode_space(encoded)


def _direction(studies: Sequence[optuna.Study]) -> str:
    return ", ".join(sorted({s.direction.name.lower() for s in studies})) or "n/a"


def _space_table(space: dict[str, BaseDistribution]) -> list[str]:
    rows = [f"| `{name}` | {describe(d)} |" for name, d in space.items()]
    return ["| parameter | search space |", "|---|---|", *rows]


def describe(distribution: BaseDistribution) -> str:
    """One line for a distribution, e.g. 'float in [1e-05, 0.1], log scale'."""
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(str(c) for c in distribution.choices)
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    kind = "int" if isinstance(distribution, IntDistribution) else "float"
    text = f"{kind} in [{distribution.low:g}, {distribution.high:g}]"
    if distribution.log:
        text += ", log scale"
    if distribution.step is not None and not (kind == "int" and distribution.step == 1):
        text += f", step {distribution.step:g}"
    return text


def _arm_row(study: optuna.Study) -> str:
    counts = {state: 0 for state in st.FINISHED}
    for trial in study.get_trials(deepcopy=False, states=st.FINISHED):
        if st.NOT_RUN not in trial.user_attrs:
            counts[trial.state] += 1
    best = st.best_trial(study)
    best_cells = ("—", "—", "—") if best is None else (
        f"{best.value:.4g}", str(best.number),
        ", ".join(f"`{k}`={_value(v)}" for k, v in best.params.items()),
    )
    return (f"| `{study.study_name}` | {study.user_attrs.get(st.ARM) or '—'} | "
            f"{study.user_attrs.get(st.N_TRIALS, '?')} | {counts[TrialState.COMPLETE]} | "
            f"{counts[TrialState.PRUNED]} | {counts[TrialState.FAIL]} | " + " | ".join(best_cells) + " |")


def _fairness_warnings(
    studies: Sequence[optuna.Study], spaces: dict[str, dict[str, BaseDistribution]]
) -> list[str]:
    warnings = []
    first = next(iter(spaces.values()), {})
    if any(space != first for space in spaces.values()):
        warnings.append("the arms were tuned on different search spaces: the comparison is unfair")
    for key, what in ((st.N_TRIALS, "budgets"), (st.SAMPLER, "samplers"), (st.PRUNER, "pruners")):
        if len({str(s.user_attrs.get(key)) for s in studies}) > 1:
            warnings.append(f"the arms had different {what}: the comparison is unfair")
    for s in studies:
        if st.best_trial(s) is None:
            warnings.append(f"`{s.study_name}` has no completed trial")
    return warnings


def _edge_warnings(study: optuna.Study, space: dict[str, BaseDistribution]) -> list[str]:
    best = st.best_trial(study)
    if best is None:
        return []
    warnings = []
    for name, value in best.params.items():
        distribution = space.get(name)
        if not isinstance(distribution, (FloatDistribution, IntDistribution)):
            continue
        side = edge_side(value, distribution)
        if side is not None:
            bound = distribution.low if side == "lower" else distribution.high
            warnings.append(
                f"`{study.study_name}`: best `{name}`={_value(value)} lies within "
                f"{EDGE_FRACTION:.0%} of the {side} bound {bound:g} of the search space; "
                "the optimum may lie outside it"
            )
    return warnings


def edge_side(value: float, distribution: FloatDistribution | IntDistribution) -> str | None:
    """'lower'/'upper' when `value` is within 5% of that bound (log space for log params)."""
    scale = math.log if distribution.log else float
    low, high, x = scale(distribution.low), scale(distribution.high), scale(value)
    position = (x - low) / (high - low)
    if position <= EDGE_FRACTION:
        return "lower"
    if position >= 1 - EDGE_FRACTION:
        return "upper"
    return None


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
