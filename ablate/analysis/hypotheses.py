"""Hypotheses as data (conf/hypothesis/*.yaml) and their evaluation against the collected records.

One YAML file per hypothesis; dropping a new file in the folder adds a hypothesis, no code change.

    id: H1                        # required, unique across the folder
    claim: one line               # required
    factor: model.ssm             # the ablated factor ...
    treatment: true               # ... its treatment level
    control: false                # ... and its control level
                                  # (a compound factor "a+b" has levels "x+y": arms that differ in both
                                  #  keys, e.g. model.ssm+model.match_macs: true+false vs false+true)
    scope:                        # which records it applies to (every key optional, lists allowed)
      task_kind: classification   #   classification | detection | segmentation
      task: shapes                #   task name
      regime: short               #   short (seq_len < tau) | long (seq_len > tau) | any
      variant: femto              #   model.name
      scan: cross                 #   model.scan
      image_size: 32x32           #   task.image_size, "HxW"
      factors: {trainer.epochs: 10}  # any other factor (dotted config key -> value or list)
    metric: primary               # primary (the task's own) or a key of the records' metrics
    higher_is_better: null        # required when metric is not primary
    test: non_inferiority         # non_inferiority | superiority | equivalence
    favours: control              # the arm the claim is for (superior / non-inferior)
    margin: 0.3                   # metric units; required > 0 for non_inferiority and equivalence
    alpha: 0.05
    min_pairs: 3                  # fewer paired seeds in a cell group -> insufficient evidence
    efficiency: false             # also: the favoured arm's metric per GMAC is higher (paired test of the
                                  #   treatment's metric/GMAC relative to the control's, in %)
    trend: false                  # also: the favoured arm's advantage grows with L (Spearman)
    labels: {true: SSM, false: no SSM}   # optional: arm names in the tables (default: the model family's)
    learned: {metric: iou_visible, above: 25}  # optional: a cell group decides only if each arm's mean of
                                  #   this metric exceeds `above` (the arms learned the task's easy part);
                                  #   cell groups whose records do not report the metric are not gated

Decisions, per cell group (all factors but the ablated one and seed): `insufficient evidence` below
min_pairs, otherwise `supported` when the Holm-adjusted p (across the hypothesis' cell groups of
that part) is below alpha, else `not supported`. A part and a hypothesis are supported only when
every cell group is; one `not supported` makes them not supported; anything else is insufficient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from ablate.analysis import stats
from ablate.analysis.collect import (Collection, Pairing, at_level, components, pair, series_factors, values_of,
                                     with_cells, with_factor)
from ablate.analysis.summaries import GIGA
from ablate.records import TASK_KINDS

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "hypothesis"
KEYS = (
    "id", "claim", "factor", "treatment", "control", "scope", "metric", "higher_is_better", "test",
    "favours", "margin", "alpha", "min_pairs", "efficiency", "trend", "labels", "learned",
)
LEARNED_KEYS = ("metric", "above")
REQUIRED = ("id", "claim", "test")
SCOPE_KEYS = ("task_kind", "task", "regime", "variant", "scan", "image_size", "factors")
# scope key -> runs-table column it filters
SCOPE_COLUMNS = {
    "task_kind": "task_kind", "task": "task", "variant": "model.name", "scan": "model.scan",
    "image_size": "task.image_size",
}
REGIMES = ("short", "long", "any")
DECISIONS = ("supported", "not supported", "insufficient evidence")
SUPPORTED, NOT_SUPPORTED, INSUFFICIENT = DECISIONS
VERDICT_COLUMNS = (
    "hypothesis", "part", "scope", "cell", "metric", "test", "margin", "n_pairs", "diff", "ci_low",
    "ci_high", "d_z", "rho", "p", "p_adj", "sd_diff", "mde", "at_chance", "decision", "note",
)
# An arm whose primary metric is within this many metric units (points) of chance, or whose CI
# reaches chance, did not learn: its cell group cannot support a claim either way.
CHANCE_MARGIN = 1.0
MIN_TREND_LENGTHS = 3  # a trend needs at least three swept sequence lengths


class HypothesisError(ValueError):
    """A hypothesis file is malformed. The message is one line naming the file and the key."""


@dataclass(frozen=True)
class Scope:
    """A filter on records; empty tuples mean no restriction."""

    task_kind: tuple[str, ...] = ()
    task: tuple[str, ...] = ()
    regime: str = "any"
    variant: tuple[str, ...] = ()
    scan: tuple[str, ...] = ()
    image_size: tuple[str, ...] = ()
    factors: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def mask(self, runs: pd.DataFrame) -> pd.Series:
        """Which rows of a runs table fall in scope."""
        keep = pd.Series(True, index=runs.index)
        for key, column in SCOPE_COLUMNS.items():
            if getattr(self, key):
                keep &= runs[column].isin(getattr(self, key))
        for key, levels in self.factors:
            keep &= np.logical_or.reduce([at_level(runs[key], level) for level in levels]) if key in runs else False
        if self.regime != "any":
            seq_len, tau = runs["cost.seq_len"].astype(float), runs["cost.tau"].astype(float)
            keep &= seq_len < tau if self.regime == "short" else seq_len > tau
        return keep

    def describe(self) -> str:
        parts = [f"{key}={','.join(map(str, getattr(self, key)))}" for key in SCOPE_COLUMNS if getattr(self, key)]
        parts += [f"{key}={','.join(map(_level_text, levels))}" for key, levels in self.factors]
        if self.regime != "any":
            parts.append("regime=short (L < τ)" if self.regime == "short" else "regime=long (L > τ)")
        return "; ".join(parts) or "all records"


@dataclass(frozen=True)
class Hypothesis:
    id: str
    claim: str
    test: str
    source: Path
    factor: str = "model.ssm"
    treatment: Any = True
    control: Any = False
    scope: Scope = field(default_factory=Scope)
    metric: str = "primary"
    higher_is_better: bool | None = None
    favours: str = "treatment"
    margin: float = 0.0
    alpha: float = 0.05
    min_pairs: int = 3
    efficiency: bool = False
    trend: bool = False
    labels: Mapping[Any, str] = field(default_factory=dict)  # level -> arm name in the report's tables
    learned: tuple[str, float] | None = None  # (metric, threshold) each arm's mean must exceed

    @property
    def value_column(self) -> str:
        return "value" if self.metric == "primary" else f"metrics.{self.metric}"

    @property
    def carried(self) -> tuple[str, ...]:
        """Per-arm columns the pairs must carry besides the compared value."""
        return (f"metrics.{self.learned[0]}",) if self.learned else ()


def _kind(value: Any) -> str:
    """A factor value's type as a hypothesis file writes it: a boolean, a number or a string."""
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    return "number" if isinstance(value, (int, float, np.integer, np.floating)) else "string"


def _level_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_hypotheses(directory: Path | None = None) -> list[Hypothesis]:
    """Every *.yaml / *.yml in the folder (default conf/hypothesis/; the extension in any case, so
    `H9.YAML` counts), sorted by file name; ids must be unique."""
    directory = Path(directory) if directory is not None else CONF_DIR
    if not directory.is_dir():
        raise HypothesisError(f"{directory}: hypothesis folder does not exist")
    loaded: dict[str, Hypothesis] = {}
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p.is_file()):
        hypothesis = load_hypothesis(path)
        if hypothesis.id in loaded:
            raise HypothesisError(f"{path}: id={hypothesis.id!r} is already declared in {loaded[hypothesis.id].source}")
        loaded[hypothesis.id] = hypothesis
    return list(loaded.values())


def load_hypothesis(path: Path) -> Hypothesis:
    """Parse and validate one hypothesis file; raise HypothesisError (one line) on a bad key or value."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HypothesisError(f"{path}: unreadable YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise HypothesisError(f"{path}: expected a mapping of keys ({', '.join(KEYS)})")
    _check_keys(path, "", data, KEYS)
    for key in REQUIRED:
        if data.get(key) in (None, ""):
            raise HypothesisError(f"{path}: {key} is required")
    _check_choice(path, "test", data["test"], stats.TESTS)
    _check_choice(path, "favours", data.get("favours", "treatment"), stats.ARMS)
    margin = _number(path, "margin", data.get("margin", 0.0))
    if data["test"] != "superiority" and margin <= 0:
        raise HypothesisError(f"{path}: margin={data.get('margin')!r}; {data['test']} needs a margin > 0 (metric units)")
    if margin < 0:
        raise HypothesisError(f"{path}: margin={margin!r}; allowed: a number >= 0 (metric units)")
    alpha = _number(path, "alpha", data.get("alpha", 0.05))
    if not 0 < alpha < 0.5:
        raise HypothesisError(f"{path}: alpha={alpha!r}; allowed: 0 < alpha < 0.5")
    min_pairs = data.get("min_pairs", 3)
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, int) or min_pairs < 2:
        raise HypothesisError(f"{path}: min_pairs={min_pairs!r}; allowed: an integer >= 2")
    metric = str(data.get("metric", "primary"))
    higher = data.get("higher_is_better")
    if higher is not None and not isinstance(higher, bool):
        raise HypothesisError(f"{path}: higher_is_better={higher!r}; allowed: true, false, null")
    if metric != "primary" and higher is None:
        raise HypothesisError(f"{path}: higher_is_better is required when metric={metric!r} (not primary)")
    treatment, control = data.get("treatment", True), data.get("control", False)
    if treatment == control:
        raise HypothesisError(f"{path}: treatment={treatment!r} equals control; the two levels must differ")
    for key in ("efficiency", "trend"):
        if not isinstance(data.get(key, False), bool):
            raise HypothesisError(f"{path}: {key}={data[key]!r}; allowed: true, false")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or set(labels) - {treatment, control} or not all(
            isinstance(v, str) and v for v in labels.values()):
        raise HypothesisError(f"{path}: labels={labels!r}; allowed: a mapping from the levels "
                              f"({_level_text(treatment)}, {_level_text(control)}) to arm names")
    return Hypothesis(
        learned=_learned(path, data.get("learned")),
        id=str(data["id"]), claim=" ".join(str(data["claim"]).split()), test=data["test"], source=Path(path),
        factor=str(data.get("factor", "model.ssm")), treatment=treatment,
        control=control, scope=_scope(path, data.get("scope") or {}), metric=metric,
        higher_is_better=higher, favours=data.get("favours", "treatment"), margin=margin, alpha=alpha,
        min_pairs=min_pairs, efficiency=data.get("efficiency", False), trend=data.get("trend", False),
        labels=labels,
    )


def _learned(path: Path, data: Any) -> tuple[str, float] | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != set(LEARNED_KEYS) or not isinstance(data["metric"], str):
        raise HypothesisError(f"{path}: learned={data!r}; allowed: {{metric: <a metric of the records>, above: <number>}}")
    return data["metric"], _number(path, "learned.above", data["above"])


def _check_keys(path: Path, prefix: str, data: Mapping, allowed: Sequence[str]) -> None:
    for key in data:
        if key not in allowed:
            raise HypothesisError(f"{path}: unknown key {prefix}{key!r}; allowed: {', '.join(allowed)}")


def _check_choice(path: Path, key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise HypothesisError(f"{path}: {key}={value!r} is not allowed; allowed: {', '.join(allowed)}")


def _number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HypothesisError(f"{path}: {key}={value!r}; allowed: a number")
    return float(value)


def _scope(path: Path, data: Any) -> Scope:
    if not isinstance(data, dict):
        raise HypothesisError(f"{path}: scope={data!r}; allowed: a mapping with keys {', '.join(SCOPE_KEYS)}")
    _check_keys(path, "scope.", data, SCOPE_KEYS)
    for kind in _as_list(data.get("task_kind")):
        _check_choice(path, "scope.task_kind", kind, TASK_KINDS)
    regime = data.get("regime", "any")
    _check_choice(path, "scope.regime", regime, REGIMES)
    factors = data.get("factors") or {}
    if not isinstance(factors, dict):
        raise HypothesisError(f"{path}: scope.factors={factors!r}; allowed: a mapping of factor -> value or list")
    return Scope(
        **{key: tuple(str(v) for v in _as_list(data.get(key))) for key in SCOPE_COLUMNS},
        regime=regime, factors=tuple(sorted((str(k), tuple(_as_list(v))) for k, v in factors.items())),
    )


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def mismatches(hypothesis: Hypothesis, collection: Collection) -> list[str]:
    """What in a hypothesis names something the records do not carry (a typo, or the wrong results):
    one line each, for the report's notes. Empty when every name is found."""
    h, runs, found = hypothesis, collection.runs, []
    if runs.empty:
        return found
    where = f"{h.id} ({h.source.name})"

    def carried(column: str) -> bool:  # extra factor columns exist for every hypothesis key, null where unset
        return column in runs and runs[column].notna().any()

    if all(carried(key) for key in components(h.factor)):
        runs = with_factor(runs, h.factor)

    if not carried(h.factor):
        known = [f for f in collection.factors if carried(f)]
        found.append(f"{where}: factor {h.factor!r} is in no record; records carry: {', '.join(known)}")
    elif "+" not in h.factor:  # a level of another type than the records' values matches nothing, silently
        # each distinct value once (a factor's values are scalars; the type keeps True and 1 apart)
        values = [v for _, v in {(type(v), v) for v in values_of(runs[h.factor].dropna())}]
        kinds = {_kind(v) for v in values}
        for key, level in (("treatment", h.treatment), ("control", h.control)):
            if _kind(level) not in kinds:
                shown = ", ".join(sorted({_level_text(v) for v in values}))
                found.append(f"{where}: {key}={level!r} is a {_kind(level)}, but the records' {h.factor} values are "
                             f"{' or '.join(sorted(kinds))}s ({shown}); write it as one of those")
    if h.metric != "primary" and not carried(h.value_column):
        metrics = sorted(c.removeprefix("metrics.") for c in runs if c.startswith("metrics."))
        found.append(f"{where}: metric {h.metric!r} is in no record; records carry: {', '.join(metrics)}")
    for key, column in SCOPE_COLUMNS.items():
        wanted = getattr(h.scope, key)
        present = set(runs[column].dropna().astype(str).unique()) if column in runs else set()
        unknown = [v for v in wanted if v not in present]
        if unknown:
            found.append(f"{where}: scope.{key}={','.join(unknown)} matches no record; records have: "
                         f"{', '.join(sorted(present))}")
    for key, _ in h.scope.factors:
        if not carried(key):
            found.append(f"{where}: scope.factors key {key!r} is in no record")
    if not found and not h.scope.mask(runs).any():
        found.append(f"{where}: no record falls in its scope ({h.scope.describe()})")
    return found


# --- evaluation ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    """A hypothesis tested against the records: one row per part and cell group, and decisions."""

    hypothesis: Hypothesis
    rows: pd.DataFrame  # VERDICT_COLUMNS
    parts: dict[str, str]  # part -> decision
    decision: str
    pairing: Pairing  # the main part's pairing (its unpaired cells go to the report)
    in_scope: int  # records in scope, any status
    absent: tuple[str, ...] = ()  # "factor=level" of each arm no record in scope is at: then no rows


def evaluate(hypothesis: Hypothesis, collection: Collection) -> Verdict:
    """Pair the records in scope and run every part of the hypothesis."""
    runs, factors = collection.runs, collection.factors
    scoped = runs[hypothesis.scope.mask(runs)]
    pairing = pair(scoped, factors, hypothesis.factor, hypothesis.treatment, hypothesis.control, hypothesis.value_column,
                   hypothesis.carried)
    levels = with_factor(scoped, hypothesis.factor)[hypothesis.factor]
    absent = tuple(f"{hypothesis.factor}={_level_text(level)}" for level in (hypothesis.treatment, hypothesis.control)
                   if not at_level(levels, level).any())
    if absent:  # the records do not sweep this factor: nothing here tests the hypothesis, no cell group counts
        return Verdict(hypothesis, pd.DataFrame(columns=list(VERDICT_COLUMNS)), {}, INSUFFICIENT, pairing,
                       len(scoped), absent)
    frames = {hypothesis.test: _cell_rows(hypothesis, pairing, hypothesis.test, efficiency=False)}
    if hypothesis.efficiency:
        frames["efficiency"] = _cell_rows(hypothesis, pairing, "efficiency", efficiency=True)
    if hypothesis.trend:
        frames["trend"] = _trend_rows(hypothesis, pairing, runs, factors)
    parts = {part: combine(frame["decision"]) for part, frame in frames.items()}
    rows = pd.concat(list(frames.values()), ignore_index=True)
    return Verdict(hypothesis, rows, parts, combine(parts.values()), pairing, len(scoped))


def combine(decisions: Any) -> str:
    """All supported -> supported; any not supported -> not supported; otherwise insufficient."""
    decisions = list(decisions)
    if decisions and all(d == SUPPORTED for d in decisions):
        return SUPPORTED
    return NOT_SUPPORTED if NOT_SUPPORTED in decisions else INSUFFICIENT


def _higher_is_better(hypothesis: Hypothesis, group: pd.DataFrame) -> bool:
    if hypothesis.higher_is_better is not None:
        return hypothesis.higher_is_better
    return bool(group["higher_is_better"].iloc[0])


def _metric_name(hypothesis: Hypothesis, group: pd.DataFrame) -> str:
    return str(group["metric"].iloc[0]) if hypothesis.metric == "primary" else hypothesis.metric


def _cell_rows(hypothesis: Hypothesis, pairing: Pairing, part: str, efficiency: bool) -> pd.DataFrame:
    """One row per cell group: the paired test of the main part, or of metric per GMAC."""
    rows = []
    for cell, group in pairing.pairs.groupby("cell", sort=False):
        t, c = group["v_t"].astype(float), group["v_c"].astype(float)
        metric = _metric_name(hypothesis, group)
        test, margin, higher = hypothesis.test, hypothesis.margin, _higher_is_better(hypothesis, group)
        if efficiency:
            # metric per GMAC (per image), the favoured arm claimed superior. Per pair, the treatment's
            # metric per GMAC relative to the control's, in %: a unit that reads the same for pico's
            # 0.003 GMACs and base's 15 (an absolute top-1/GMAC difference of pico reads like -35000).
            per_gmac_t = t / (group["cost.macs_t"].astype(float) / GIGA)
            per_gmac_c = c / (group["cost.macs_c"].astype(float) / GIGA)
            t, c = 100 * (per_gmac_t / per_gmac_c - 1), pd.Series(0.0, index=t.index)
            metric, test, margin, higher = f"{metric}/GMAC, % vs control", "superiority", 0.0, True
        result = stats.paired_test(t, c, test=test, favours=hypothesis.favours, margin=margin,
                                   higher_is_better=higher, alpha=hypothesis.alpha)
        row = _row(hypothesis, part, group["label"].iloc[0], metric, test, margin, result.n, result.diff,
                   result.ci_low, result.ci_high, result.d_z, math.nan, result.p)
        sd = float(np.std(t - c, ddof=1)) if result.n > 1 else math.nan
        row["sd_diff"], row["mde"] = sd, stats.mde(sd, result.n, hypothesis.alpha)
        if result.n > 1 and (t - c).nunique() == 1:
            row["note"] = "every pair shows the same difference: decided by where it lies, not by a t-test"
        at_chance = _arms_at_chance(hypothesis, group)
        if at_chance:
            row["at_chance"], row["note"] = True, at_chance
        elif row["note"] == "" and result.n > 1:
            row["note"] = _power_note(hypothesis, margin, result.diff, sd, row["mde"])
        rows.append(row)
    lonely = pairing.unpaired[~pairing.unpaired["cell"].isin(set(pairing.pairs["cell"]))].drop_duplicates("cell")
    # cell groups in scope with records of one arm only still count, with n = 0
    test = "superiority" if efficiency else hypothesis.test
    rows += [_row(hypothesis, part, label, hypothesis.metric, test, hypothesis.margin, 0, *[math.nan] * 6)
             for label in lonely["label"]]
    return _decide(hypothesis, rows)


def _arms_at_chance(hypothesis: Hypothesis, group: pd.DataFrame) -> str:
    """A note naming each arm of a cell group whose primary metric is not clearly above chance, or
    whose `learned` metric is not above its threshold, else ''."""
    if hypothesis.learned:  # records that do not report the metric (another task's) are not gated
        metric, above = hypothesis.learned
        means = {level: pd.to_numeric(group[f"metrics.{metric}{suffix}"]).mean()
                 for level, suffix in ((hypothesis.treatment, "_t"), (hypothesis.control, "_c"))}
        short = [f"{hypothesis.factor}={_level_text(level)} (mean {metric} {mean:.3g})"
                 for level, mean in means.items() if not pd.isna(mean) and not mean > above]
        if short:
            return f"did not learn: {'; '.join(short)}, not above {above:g} (learned:); an arm that did not learn decides nothing"
    chance = group["chance"].iloc[0] if "chance" in group else None
    if hypothesis.metric != "primary" or chance is None or pd.isna(chance):
        return ""
    sign = 1.0 if _higher_is_better(hypothesis, group) else -1.0
    stuck = []
    for level, column in ((hypothesis.treatment, "v_t"), (hypothesis.control, "v_c")):
        values = group[column].astype(float).to_numpy()
        n, mean = len(values), float(values.mean())
        half = (stats.t_quantile(1 - hypothesis.alpha, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
                if n > 1 else math.inf)  # half-width of the two-sided 1 - 2*alpha CI of the arm's mean
        above = sign * (mean - float(chance))
        if above <= CHANCE_MARGIN or above - half <= 0:
            stuck.append(f"{hypothesis.factor}={_level_text(level)} (mean {mean:.3g}, chance {float(chance):.3g})")
    if not stuck:
        return ""
    return f"not clearly above chance: {'; '.join(stuck)}; an arm that did not learn decides nothing"


def power_target(margin: float, diff: float) -> tuple[float, str]:
    """The effect a design must be able to see: the margin when the test has one, else the observed effect."""
    return (margin, "the margin") if margin > 0 else (abs(diff), "the observed effect")


def _power_note(hypothesis: Hypothesis, margin: float, diff: float, sd: float, mde: float) -> str:
    """For a cell that may come out not supported: say when the design could not see the effect it looked for."""
    target, what = power_target(margin, diff)
    if not (math.isfinite(mde) and math.isfinite(target)) or mde <= target:
        return ""
    needed = stats.pairs_needed(sd, target, hypothesis.alpha)
    more = f"about {needed} paired seeds would resolve it" if needed else "no feasible number of seeds resolves it"
    return f"under-powered: mde {mde:.3g} > {what} {target:.3g} at {stats.POWER:.0%} power; {more}"


def _trend_rows(hypothesis: Hypothesis, in_scope: Pairing, runs: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """One row per series (a cell group without its image size): Spearman rho of advantage vs L.

    A series counts when some of its pairs are in scope; its trend then reads every swept size,
    across tau (the regime filter does not apply), so that the crossover region is seen.
    """
    everywhere = replace(hypothesis.scope, regime="any")
    pairing = pair(runs[everywhere.mask(runs)], factors, hypothesis.factor, hypothesis.treatment,
                   hypothesis.control, hypothesis.value_column, hypothesis.carried)
    keys = series_factors(pairing)
    pairs = with_cells(pairing.pairs, keys, "series", "series_label")
    pairs = pairs[pairs["series"].isin(set(with_cells(in_scope.pairs, keys, "series", "series_label")["series"]))]
    rows = []
    for _, group in pairs.groupby("series", sort=False):
        counts = group.groupby("cost.seq_len").size()
        lengths = sorted(counts[counts >= hypothesis.min_pairs].index)
        used = group[group["cost.seq_len"].isin(lengths)]
        sign = (1 if _higher_is_better(hypothesis, group) else -1) * (1 if hypothesis.favours == "treatment" else -1)
        rho, p = math.nan, math.nan
        if len(lengths) >= MIN_TREND_LENGTHS:
            rho, p = stats.trend(used["cost.seq_len"].astype(float), sign * used["diff"])
        row = _row(hypothesis, "trend", group["series_label"].iloc[0], _metric_name(hypothesis, group),
                   "spearman", math.nan, len(used), math.nan, math.nan, math.nan, math.nan, rho, p)
        row["note"] = _trend_note(lengths, counts, hypothesis.min_pairs)
        # a trend through sizes where an arm did not learn reads noise around chance: it decides nothing
        stuck = [f"L={int(length)}: {note}" for length, at in used.groupby("cost.seq_len", sort=True)
                 if (note := _arms_at_chance(hypothesis, at))]
        if stuck:
            row["at_chance"], row["note"] = True, "; ".join(stuck)
        rows.append(row)
    return _decide(hypothesis, rows, trend=True)


def _trend_note(lengths: list, counts: pd.Series, min_pairs: int) -> str:
    notes = []
    if len(lengths) < MIN_TREND_LENGTHS:
        notes.append(f"{len(lengths)} sequence length(s) with >= {min_pairs} pairs; a trend needs {MIN_TREND_LENGTHS}")
    left_out = [int(length) for length in counts.index if length not in lengths]
    if left_out:
        notes.append(f"L={','.join(map(str, left_out))} left out (< {min_pairs} pairs)")
    return "; ".join(notes)


def _row(hypothesis: Hypothesis, part: str, cell: str, metric: str, test: str, margin: float, n: int, diff: float,
         ci_low: float, ci_high: float, d_z: float, rho: float, p: float) -> dict[str, Any]:
    return {
        "hypothesis": hypothesis.id, "part": part, "scope": hypothesis.scope.describe(), "cell": cell,
        "metric": metric, "test": test, "margin": margin, "n_pairs": n, "diff": diff, "ci_low": ci_low,
        "ci_high": ci_high, "d_z": d_z, "rho": rho, "p": p, "p_adj": math.nan, "sd_diff": math.nan, "mde": math.nan, "at_chance": False,
        "decision": INSUFFICIENT, "note": "",
    }


def _decide(hypothesis: Hypothesis, rows: list[dict], trend: bool = False) -> pd.DataFrame:
    """Holm across the cell groups that were tested, then one decision per row."""
    frame = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    if frame.empty:
        return frame
    enough = frame["n_pairs"] >= hypothesis.min_pairs
    frame["p_adj"] = stats.holm(frame["p"].where(enough & frame["p"].notna()), hypothesis.alpha)
    decided = [_decision(hypothesis, row, trend) for _, row in frame.iterrows()]
    frame["decision"], frame["note"] = [decision for decision, _ in decided], [note for _, note in decided]
    return frame


def _decision(hypothesis: Hypothesis, row: pd.Series, trend: bool) -> tuple[str, str]:
    note = row["note"]
    if row["n_pairs"] == 0:  # a trend row says why (too few lengths with enough pairs)
        return INSUFFICIENT, note or "no complete pair (see missing pairs)"
    if not trend and row["n_pairs"] < hypothesis.min_pairs:
        few = f"{row['n_pairs']} paired seed(s), fewer than min_pairs={hypothesis.min_pairs}"
        return INSUFFICIENT, f"{few}; {note}" if row["at_chance"] else few  # both reasons: the arm did not learn
    if row["at_chance"]:
        return INSUFFICIENT, note
    if math.isnan(row["p_adj"]):
        return INSUFFICIENT, note or "no spread in the data: the statistic is undefined"
    if row["p_adj"] < hypothesis.alpha:
        return SUPPORTED, "" if note.startswith("under-powered") else note
    return NOT_SUPPORTED, note
