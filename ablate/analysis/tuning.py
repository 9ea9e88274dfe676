"""The report's tuning section: space, budget per arm, best parameters, and edge warnings.

    tuning_section(json.loads((sweep_dir / "tuning.json").read_text())) -> str

Everything comes from the tuner's summary file (`tuning.json` in the tuning sweep's folder, one
entry per arm; its shape: ablate.records.tuning): the space and budget the sweeper gave each study,
the trial counts and the best trial. The report never opens the Optuna storage, nor imports Optuna.
An arm's best value lying within 5% of an interval bound (measured in log space for log parameters)
gets a warning: the optimum may lie outside the space, and the comparison then depends on where the
bounds were put.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ablate.records.tuning import Dimension, describe, dimension

EDGE_FRACTION = 0.05


def tuning_section(summary: Mapping[str, Any]) -> str:
    """Markdown for the report from a tuning.json: one table for the space, one row per arm, then warnings."""
    studies = list(summary.get("studies") or [])
    if not studies:
        raise ValueError("tuning.json lists no study")
    spaces = {s["study"]: {key: dimension(text) for key, text in s["space"].items()} for s in studies}
    # No heading: the report that embeds this section writes its own.
    lines = [f"Studies in `{summary.get('storage')}`; direction: {summary.get('direction', 'n/a')}.", ""]
    lines += _space_table(spaces[studies[0]["study"]])
    lines += ["", "| study | arm | budget | complete | pruned | failed | best value | best trial "
              "| best parameters |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_arm_row(s) for s in studies]
    warnings = _fairness_warnings(studies) + [w for s in studies for w in _edge_warnings(s, spaces[s["study"]])]
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _space_table(space: dict[str, Dimension]) -> list[str]:
    rows = [f"| `{name}` | {describe(d)} |" for name, d in space.items()]
    return ["| parameter | search space |", "|---|---|", *rows]


def _arm_row(study: Mapping[str, Any]) -> str:
    counts, best = study.get("trials") or {}, study.get("best")
    best_cells = ("—", "—", "—") if best is None else (
        f"{best['value']:.4g}", str(best["trial"]),
        ", ".join(f"`{k}`={_value(v)}" for k, v in best["params"].items()),
    )
    return (f"| `{study['study']}` | {study.get('arm') or '—'} | {study.get('n_trials', '?')} | "
            f"{counts.get('complete', 0)} | {counts.get('pruned', 0)} | {counts.get('fail', 0)} | "
            + " | ".join(best_cells) + " |")


def _fairness_warnings(studies: Sequence[Mapping[str, Any]]) -> list[str]:
    warnings = []
    if len({str(s.get("space")) for s in studies}) > 1:
        warnings.append("the arms were tuned on different search spaces: the comparison is unfair")
    for key, what in (("n_trials", "budgets"), ("sampler", "samplers"), ("pruner", "pruners")):
        if len({str(s.get(key)) for s in studies}) > 1:
            warnings.append(f"the arms had different {what}: the comparison is unfair")
    warnings += [f"`{s['study']}` has no completed trial" for s in studies if s.get("best") is None]
    return warnings


def _edge_warnings(study: Mapping[str, Any], space: dict[str, Dimension]) -> list[str]:
    best = study.get("best")
    if best is None:
        return []
    warnings = []
    for name, value in best["params"].items():
        dim = space.get(name)
        if dim is None or not dim.numeric:
            continue
        side = edge_side(value, dim)
        if side is not None:
            bound = dim.low if side == "lower" else dim.high
            warnings.append(
                f"`{study['study']}`: best `{name}`={_value(value)} lies within "
                f"{EDGE_FRACTION:.0%} of the {side} bound {bound:g} of the search space; "
                "the optimum may lie outside it"
            )
    return warnings


def edge_side(value: float, space: Dimension) -> str | None:
    """'lower'/'upper' when `value` is within 5% of that bound of a numeric space (log space for log params)."""
    scale = math.log if space.log else float
    low, high, x = scale(space.low), scale(space.high), scale(value)
    position = (x - low) / (high - low)
    if position <= EDGE_FRACTION:
        return "lower"
    if position >= 1 - EDGE_FRACTION:
        return "upper"
    return None


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
