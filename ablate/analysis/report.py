"""`ablate report`: collect -> pair -> test -> report.md, figures (PNG), results.csv, verdicts.csv.

    ablate report SWEEP_DIR [SWEEP_DIR ...] [--results ROOT] [--out DIR] [--hypotheses DIR]

The same records always give the same files: everything is sorted, the bootstrap is seeded and no
timestamp of the report itself is written (the dates shown are the runs' own).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import re
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ablate import atomic, records
from ablate.analysis import figures, stats, summaries
from ablate.analysis.collect import (
    CELL_FILE, COMPLETED, INCOMPLETE, RESULT_FILE, UNREADABLE, Collection, Pairing, at_level, cell_factors, collect,
    combination_codes, components, format_level, pair, series_factors, shown_path, values_of, with_cells,
    with_factor,
)
from ablate.analysis.hypotheses import (
    CHANCE_MARGIN, CONF_DIR, INSUFFICIENT, VERDICT_COLUMNS, Hypothesis, Verdict, evaluate, load_hypotheses, mismatches,
)
from ablate.analysis.tuning import tuning_section
from ablate.analysis.workers import COUNT as WORKER_COUNT, Workers
from ablate.records.tuning import SUMMARY_FILE

log = logging.getLogger("ablate.analysis")

REPORT_FILE = "report.md"
# the report's sections after the first screen, in order (the template's `sections`)
SECTIONS = ("what_was_run", "verdict_details", "numbers", "per_task", "arms", "curves", "sequence", "tuning",
            "problems", "files")
TEMPLATES = Path(__file__).with_name("templates")
DEFAULT_TEMPLATE = "report.md.j2"
RESULTS_CSV = "results.csv"
VERDICTS_CSV = "verdicts.csv"
LISTED_ROWS = 20  # rows of a problem table shown in report.md; a longer one goes whole to a CSV beside it
NON_COMPLETED = tuple(s for s in records.STATUSES if s != COMPLETED)
SEED_SD_RATIO = 3.0  # an arm whose seed-to-seed sd exceeds the other arm's by this factor is flagged


@dataclass(frozen=True)
class Comparison:
    """The two arms the descriptive sections (per-task tables, costs, figures, curves, problems) compare."""

    factor: str
    treatment: Any
    control: Any
    names: dict[str, str]  # arm key ("t", "c") -> the arm's name in tables and figures


def comparison(hypotheses: Sequence[Hypothesis], runs: pd.DataFrame,
               verdicts: Sequence[Verdict] = (), task: str | None = None) -> Comparison:
    """The factor and levels of the first hypothesis (file order) whose verdict has paired seeds (in
    `task`, when given), else of the first hypothesis, or, without hypotheses, the first switch of the
    records' model family. Arm names: the hypothesis' `labels`, else the family switch's, else key=level."""
    family = _family(runs)
    if hypotheses:
        paired = [v.hypothesis for v in verdicts
                  if len(v.pairing.pairs) and (task is None or (v.pairing.pairs["task"] == task).any())]
        h = paired[0] if paired else hypotheses[0]
        factor, treatment, control, labels = h.factor, h.treatment, h.control, dict(h.labels)
    elif family is not None and family.switches:
        factor, treatment, control, labels = f"model.{family.switches[0][0]}", True, False, {}
    else:
        raise ValueError("the report needs a hypothesis (or a model family with a switch) to compare two arms")
    switch = (family.labels(factor.removeprefix("model."))
              if family is not None and factor.startswith("model.") else None)

    def name(level: Any) -> str:
        if level in labels:
            return str(labels[level])
        if switch is not None and isinstance(level, bool):
            return switch[level]
        return f"{factor}={format_level(level)}"

    return Comparison(factor, treatment, control, {"t": name(treatment), "c": name(control)})


@dataclass(frozen=True)
class TaskView:
    """One task's descriptive sections: the comparison they show, its arm summary and sequence points."""

    task: str
    compared: Comparison
    summary: pd.DataFrame
    points: pd.DataFrame
    pairs: pd.DataFrame  # the paired seeds (v_t, v_c, diff), with their series (a cell group less its size)


def _per_task(collection: Collection, hypotheses: Sequence[Hypothesis], verdicts: Sequence[Verdict]) -> list[TaskView]:
    """Each task compared on the first hypothesis with pairs there: shapes swept over model.causal shows
    causal vs fully visible even when pathfinder in the same report shows SSM vs no SSM."""
    views = []
    for task in sorted(collection.runs["task"].dropna().unique()):
        runs = collection.runs[collection.runs["task"] == task]
        compared = comparison(hypotheses, runs, verdicts, task)
        pairing = pair(runs, collection.factors, compared.factor, compared.treatment, compared.control)
        pairs = with_cells(pairing.pairs, series_factors(pairing), "series", "series_label")
        views.append(TaskView(task, compared, summaries.arm_summary(runs, pairing), summaries.sequence_points(pairing),
                              pairs))
    return views


def _family(runs: pd.DataFrame) -> records.FamilyFacts | None:
    """The model family of the first record that names one (its `family` block; None if no record has one)."""
    blocks = runs["family"].dropna() if "family" in runs else ()
    return records.FamilyFacts.from_json(json.loads(blocks.iloc[0])) if len(blocks) else None


def default_out_dir(sweep_dirs: Sequence[Path], results_root: Path | None = None) -> Path:
    """reports/<sweep-name>/ (several sweeps: names joined by '+'; a results root alone: all-runs)."""
    names = [Path(d).resolve().name for d in sweep_dirs]
    return Path("reports") / ("+".join(names) if names else "all-runs")


def write_report(
    sweep_dirs: Sequence[Path],
    out_dir: Path | None = None,
    hypotheses_dir: Path | None = None,
    *,
    results_root: Path | None = None,
    template: Path | None = None,
    stopwatch: Stopwatch | None = None,
) -> Path:
    """Write report.md (rendered from `template`, default the shipped one), figures and the two CSV
    files; return the path of report.md. `stopwatch` gets the seconds of each phase."""
    clock = stopwatch if stopwatch is not None else Stopwatch()
    sweep_dirs = [Path(d) for d in sweep_dirs]
    hypotheses = load_hypotheses(hypotheses_dir)
    with Workers() as workers:
        reading = workers.submit(collect, sweep_dirs, results_root, _hypothesis_factors(hypotheses))
        stats.import_libraries()  # while a worker reads the records
        collection = reading.result()
        clock.lap("read")
        if collection.runs.empty:
            raise ValueError(_nothing_read(sweep_dirs, results_root, collection))
        # while this process analyses: results.csv's text, and matplotlib's import
        results_csv = workers.submit(_results_csv, collection.runs)
        for _ in range(WORKER_COUNT):
            workers.submit(figures.import_matplotlib)
        out = Path(out_dir) if out_dir is not None else default_out_dir(sweep_dirs, results_root)
        out.mkdir(parents=True, exist_ok=True)
        with _frozen_heap():
            analysis = _analyse(collection, hypotheses)
            clock.lap("analysis")
            path = _render(analysis, collection, results_csv, workers, out, template, results_root, hypotheses_dir)
        clock.lap("render")
        return path


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The objects alive now (the libraries', the runs table) out of the cycle collector's sight:
    statsmodels' Holm runs a full collection on every call, which would walk them all each time. A
    process that has frozen objects of its own is left as it is (unfreezing would hand those back
    to the collector too)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class Analysis:
    """What the report shows beside the records: each hypothesis's verdicts, the comparison that the
    descriptive sections show with its pairing, and each task's view of it."""

    hypotheses: list[Hypothesis]
    verdicts: list[Verdict]
    compared: Comparison
    pairing: Pairing
    tasks: list[TaskView]


def _analyse(collection: Collection, hypotheses: list[Hypothesis]) -> Analysis:
    verdicts = [evaluate(h, collection) for h in hypotheses]
    for hypothesis in hypotheses:
        for line in mismatches(hypothesis, collection):
            log.warning("%s", line)
            collection.notes.append(line)
    compared = comparison(hypotheses, collection.runs, verdicts)
    pairing = pair(collection.runs, collection.factors, compared.factor, compared.treatment, compared.control)
    return Analysis(hypotheses, verdicts, compared, pairing, _per_task(collection, hypotheses, verdicts))


def _render(analysis: Analysis, collection: Collection, results_csv: Future[str], workers: Workers, out: Path,
            template: Path | None, results_root: Path | None, hypotheses_dir: Path | None) -> Path:
    """The figures, drawn by the workers while this process writes the CSVs and every section that names
    none; then report.md."""
    hypotheses, verdicts, tasks = analysis.hypotheses, analysis.verdicts, analysis.tasks
    drawing = {task: kinds for view in tasks for task, kinds in _draw(workers, out, view).items()}
    curves, curve_files = _curves_section(collection, workers, out, tasks)
    atomic.write(out / RESULTS_CSV, results_csv.result())
    _write_verdicts_csv(out, verdicts)
    listings = Listings(out)
    early = {
        "what_was_run": _what_was_run(collection, results_root, hypotheses, hypotheses_dir),
        "verdict_details": _verdict_section(verdicts),
        "numbers": _paragraphs(verdicts),
        "arms": _arms_section(collection.runs, hypotheses),
        "curves": curves,
        "tuning": _tuning_section(collection),
        "problems": _problems_section(collection, analysis.pairing, verdicts, analysis.compared, listings),
    }
    drawn = {task: {kind: future.result() for kind, future in kinds.items()} for task, kinds in drawing.items()}
    curve_files = [future.result() for future in curve_files]
    late = {"per_task": _task_sections(tasks, drawn), "sequence": _sequence_section(tasks, drawn),
            "files": _files_section(drawn, curve_files, listings.written)}
    context = {
        "title": f"Ablation report: {', '.join(s.name for s in collection.sweeps) or 'all runs'}",
        "warning": _did_not_learn(verdicts),
        "verdicts": _glance(verdicts),
        "ran": _ran(collection),
        "sections": {name: {**early, **late}[name] for name in SECTIONS},
    }
    path = out / REPORT_FILE
    atomic.write(path, render(context, template))
    return path


class Stopwatch:
    """Seconds per phase of write_report (read, analysis, render), for `ablate report --timings`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def render(context: Mapping[str, Any], template: Path | None = None) -> str:
    """report.md from `context` (plain data: see write_report) through the shipped template
    (ablate/analysis/templates/report.md.j2) or a user's own; ValueError (one line) on a template error."""
    import jinja2

    loader = jinja2.FileSystemLoader([str(Path(template).parent) if template else str(TEMPLATES)])
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False, trim_blocks=True, lstrip_blocks=True)
    name = Path(template).name if template else DEFAULT_TEMPLATE
    try:
        text = env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise ValueError(f"--template {template}: no such file") from exc
    except jinja2.TemplateError as exc:
        where = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise ValueError(f"--template {template or name}{where}: {exc.message or type(exc).__name__}") from exc
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def _nothing_read(sweep_dirs: Sequence[Path], results_root: Path | None, collection: Collection) -> str:
    """Why no record was read, and which folder or flag would read them: the line the report fails with.

    A report of zero records looks like a report; it hides a wrong path or a layout the reader skips.
    """
    searched = [*sweep_dirs, *([Path(results_root)] if results_root is not None else [])]
    head = f"no record read from {', '.join(shown_path(p) for p in searched)}"
    if len(collection.problems):
        first = collection.problems.iloc[0]
        return f"{head}: {len(collection.problems)} problem(s), e.g. {first['file']}: {first['problem']}"
    for folder in sweep_dirs:
        if any(folder.glob(f"runs/*/{RESULT_FILE}")):
            where = shown_path(folder)
            return f"{head}: {where} holds runs/<run_id>/{RESULT_FILE}, a results root: use --results {where}"
        if (folder / "sweeps").is_dir():
            return f"{head}: {shown_path(folder)} holds sweeps/: give one of {shown_path(folder / 'sweeps')}/<sweep>"
    strays = sorted(path for folder in searched for path in folder.rglob(RESULT_FILE))
    layout = (f"a sweep folder is results/sweeps/<sweep>/ (job folders with {CELL_FILE}); --results ROOT reads "
              f"ROOT/runs/<run_id>/{RESULT_FILE}")
    if strays:
        example = shown_path(strays[0])
        return f"{head}: {len(strays)} {RESULT_FILE} file(s) lie outside the layout (e.g. {example}); {layout}"
    return f"{head}: it holds no records; {layout}"


def _did_not_learn(verdicts: list[Verdict]) -> str:
    """A first-screen warning when some cell groups compare arms that did not learn ('' otherwise)."""
    rows = pd.concat([v.rows for v in verdicts if not v.rows.empty] or [pd.DataFrame(columns=list(VERDICT_COLUMNS))])
    rows = rows[rows["part"] != "trend"]  # a trend row's "cell" is a series of cell groups
    stuck = sorted(set(rows.loc[rows["at_chance"].astype(bool), "cell"]))
    if not stuck:
        return ""
    return (f"> **Warning: in {len(stuck)} of {rows['cell'].nunique()} cell group(s) an arm is not clearly above "
            "chance: it did not learn, and those comparisons decide nothing** (see the notes under Verdicts).")


def _hypothesis_factors(hypotheses: Iterable[Hypothesis]) -> list[str]:
    keys = set()
    for h in hypotheses:
        keys.update(components(h.factor))
        keys.update(key for key, _ in h.scope.factors)
    return sorted(keys)


# --- formatting ----------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number for a table; empty for a missing one."""
    return "" if _missing(value) else format(value, spec)


def column(values: pd.Series, spec: str = ".3f") -> pd.Series:
    """A numeric column formatted for a table."""
    return values.map(lambda v: fmt(v, spec))


def fmt_p(p: float) -> str:
    return "" if _missing(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _p_phrase(p: float) -> str:
    """'= 0.0123' or '< 0.0001', to follow a 'p' in a sentence."""
    text = fmt_p(p)
    return f"< {text[1:]}" if text.startswith("<") else f"= {text}"


def fmt_ci(diff: float, low: float, high: float) -> str:
    if _missing(diff):
        return ""
    return fmt(diff, "+.3f") + ("" if _missing(low) else f" [{low:+.3f}, {high:+.3f}]")


def fmt_mean(mean: float, sd: float, n: int) -> str:
    if not n:
        return ""
    return fmt(mean) + ("" if _missing(sd) else f" ± {sd:.3f}") + f" (n={n})"


def md_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table of already formatted cells (| escaped); '_none_' for no rows."""
    if frame.empty:
        return "_none_"
    cells = frame.astype(str).map(lambda text: text.replace("|", "\\|").replace("\n", " "))
    return cells.to_markdown(index=False, disable_numparse=True)


def _without_task(label: str) -> str:
    return ", ".join(part for part in label.split(", ") if not part.startswith("task=")) or label


# --- outputs -------------------------------------------------------------------------------------

def _draw(workers: Workers, out: Path, view: TaskView) -> dict[str, dict[str, Future]]:
    """A task's figures, being drawn; {task: {kind: Future of the file name}}."""
    drawn: dict[str, dict[str, Future]] = {}
    names = view.compared.names
    if len(view.summary):
        drawn[view.task] = {"gmacs": workers.submit(figures.metric_vs_gmacs, view.summary, view.pairs, out, names),
                            "bars": workers.submit(figures.arm_bars, view.summary, view.pairs, out, names)}
    if len(view.points):
        drawn.setdefault(view.task, {})["length"] = workers.submit(figures.difference_vs_length, view.points,
                                                                   view.pairs, out, names)
    return drawn


def _results_csv(runs: pd.DataFrame) -> str:
    """results.csv's text: the runs table, overrides as one string per run."""
    return runs.drop(columns=["family"]).assign(overrides=[" ".join(o) for o in runs["overrides"]]).to_csv(index=False)


def _write_verdicts_csv(out: Path, verdicts: list[Verdict]) -> None:
    rows = [v.rows for v in verdicts if not v.rows.empty]
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(VERDICT_COLUMNS))
    atomic.write(out / VERDICTS_CSV, frame.to_csv(index=False))


# --- sections ------------------------------------------------------------------------------------

REASON_CHARS = 160  # a verdict's reason on the first screen; the full note is under "Verdicts"


def _glance(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    """The first screen's rows, one per hypothesis: id, claim, decision, reason (when insufficient),
    effect (diff with its CI, or the range over cell groups), pairs and mde, all as text."""
    rows = []
    for v in verdicts:
        main = v.rows[v.rows["part"] == v.hypothesis.test]
        paired = main[main["n_pairs"] > 0]
        if len(paired) == 1:
            row = paired.iloc[0]
            effect, mde = f"{fmt_ci(row['diff'], row['ci_low'], row['ci_high'])} {row['metric']}", fmt(row["mde"], ".3g")
        elif len(paired):
            diffs = paired["diff"].astype(float)
            effect = f"{len(paired)} cell groups: diff {diffs.min():+.3g} to {diffs.max():+.3g} {paired['metric'].iloc[0]}"
            low, high = (f"{paired['mde'].astype(float).agg(pick):.3g}" for pick in ("min", "max"))
            mde = low if low == high else f"{low}-{high}"
        else:
            effect, mde = "no pairs", ""
        reason = ""
        if v.decision == INSUFFICIENT:
            notes = [n for n in v.rows["note"] if n] or (
                [f"no record in its scope ({v.hypothesis.scope.describe()})"] if not v.in_scope
                else [f"no record in its scope is at {', '.join(v.absent)}"] if v.absent else ["no paired cell group"])
            reason = notes[0] if len(notes[0]) <= REASON_CHARS else notes[0][:REASON_CHARS - 1] + "…"
        rows.append({"hypothesis": v.hypothesis.id, "claim": v.hypothesis.claim, "decision": v.decision,
                     "reason": reason, "effect": effect, "pairs": int(main["n_pairs"].sum()), "mde": mde})
    return rows


def _ran(collection: Collection) -> dict[str, Any]:
    """What ran, for the first screen: cells by status, seeds, record problems, job hours, device."""
    runs = collection.runs
    wall = pd.to_numeric(runs.get("cost.wall_seconds"), errors="coerce").sum() if len(runs) else 0.0
    return {
        "cells": len(runs),
        "by_status": {s: int((runs["status"] == s).sum()) for s in records.STATUSES if (runs["status"] == s).any()},
        "seeds": sorted({int(s) for s in runs["seed"].dropna()}) if "seed" in runs else [],
        "problems": len(collection.problems),
        "refused": _refused(collection.problems),
        "job_hours": round(float(wall) / 3600, 2),
        "device": _distinct(runs["env.device"]) if len(runs) else "unknown",
    }


def _refused(problems: pd.DataFrame) -> str:
    """How many records were not read, and why, in one line ("" when every record was read)."""
    details = problems.loc[problems["kind"] == UNREADABLE, "problem"].tolist()
    if not details:
        return ""
    why: dict[str, int] = {}
    for detail in details:
        if detail.startswith("schema="):  # another version of the record: never read as this one
            reason = f"of {detail.split(',')[0].removeprefix('schema=')} (this version reads {records.SCHEMA!r})"
        elif detail.startswith("missing keys"):
            reason = "lacking keys every record has"
        elif " is a " in detail or "expected one of" in detail:
            reason = "with a value of the wrong type"
        elif detail.startswith(("unreadable record", "record is not")):
            reason = "that are not a JSON record"
        else:
            reason = "failing another check"
        why[reason] = why.get(reason, 0) + 1
    parts = [f"{n} {reason}" for reason, n in sorted(why.items(), key=lambda item: -item[1])]
    return f"{len(details)} record(s) refused, not read: {', '.join(parts)}; each is listed under Problems"


def _what_was_run(collection: Collection, results_root: Path | None, hypotheses: list[Hypothesis],
                  hypotheses_dir: Path | None) -> str:
    runs = collection.runs
    rows = [{"sweep": s.name, "folder": shown_path(s.path), "jobs": s.jobs,
             "command": "<br>".join(f"`{c}`" for c in s.commands) or "(no multirun.yaml)"} for s in collection.sweeps]
    if results_root is not None:
        rows.append({"sweep": "(every record)", "folder": shown_path(results_root), "jobs": "", "command": ""})
    sweeps = pd.DataFrame(rows, columns=["sweep", "folder", "jobs", "command"])
    counts = [{"status": status, "records": int((runs["status"] == status).sum())} for status in records.STATUSES]
    problem_kinds = collection.problems["kind"].value_counts().sort_index()
    counts += [{"status": kind, "records": n} for kind, n in problem_kinds.items()]
    lines = [
        "## What was run", "", md_table(sweeps), "",
        f"- Records read: {len(runs)}",
        f"- Commit: {_distinct(runs['env.git_commit'])}",
        f"- Hardware: {_distinct(runs['env.device'])} on {runs['env.hostname'].nunique()} host(s)",
        f"- Runs started {_extreme(runs['env.started_at'], min)}, "
        f"last finished {_extreme(runs['env.finished_at'], max)}",
        f"- Hypotheses: {', '.join(f'{h.id} ({h.source.name})' for h in hypotheses) or 'none'}"
        f" from {shown_path(hypotheses_dir or CONF_DIR)}",
        "", "Jobs by status:", "", md_table(pd.DataFrame(counts)),
    ]
    return "\n".join(lines + _init_block(runs))


def _init_block(runs: pd.DataFrame) -> list[str]:
    """Where each fine-tuned cell's backbone came from (the record's `init`): the upstream cell, its task
    and sha256; [] when no cell started from a checkpoint."""
    started = runs[runs["init.upstream_run_id"].notna() | runs["init.checkpoint"].notna()]
    if started.empty:
        return []
    tasks = runs.set_index("run_id")["task"].to_dict()
    family = _family(runs)
    switches = sorted(f"model.{key}" for key, _ in (family.switches if family else ()))
    rows = pd.DataFrame({
        "cell": started["run_id"], "task": started["task"], "seed": started["seed"],
        "arm": [" ".join(f"{k}={r.get(k)}" for k in switches) for _, r in started.iterrows()],
        "status": started["status"],
        "started from": [(f"{up} ({tasks.get(up, 'not in this report')})" if isinstance(up, str) else "task.backbone_ckpt")
                         for up in started["init.upstream_run_id"]],
        "checkpoint sha256": [f"`{h[:16]}`" if isinstance(h, str) else "" for h in started["init.sha256"]],
    })
    return ["", "Initial backbone weights (task.backbone_from / task.backbone_ckpt):", "", md_table(rows)]



def _distinct(column: pd.Series) -> str:
    values = sorted(str(v) for v in column.dropna().unique())
    return ", ".join(values) if values else "unknown"


def _extreme(column: pd.Series, pick: Any) -> str:
    values = [str(v) for v in column.dropna().unique()]
    return pick(values) if values else "unknown"  # ISO-8601 UTC strings sort in time order


def _verdict_section(verdicts: list[Verdict]) -> str:
    summary = pd.DataFrame(
        [{"hypothesis": v.hypothesis.id, "claim": v.hypothesis.claim, "scope": v.hypothesis.scope.describe(),
          "parts": "; ".join(f"{part}: {decision}" for part, decision in v.parts.items()),
          "pairs": int(v.rows.loc[v.rows["part"] == v.hypothesis.test, "n_pairs"].sum()),
          "decision": f"**{v.decision}**"} for v in verdicts],
        columns=["hypothesis", "claim", "scope", "parts", "pairs", "decision"])
    cells = [
        {"hypothesis": row["hypothesis"], "part": row["part"], "cell group": row["cell"], "metric": row["metric"],
         "n pairs": row["n_pairs"], "diff [CI]": fmt_ci(row["diff"], row["ci_low"], row["ci_high"]),
         "effect": _effect(row), "p": fmt_p(row["p"]), "p (Holm)": fmt_p(row["p_adj"]),
         "mde": fmt(row["mde"], ".3g"), "decision": row["decision"], "note": row["note"]}
        for v in verdicts for _, row in v.rows.iterrows()
    ]
    return "\n".join([
        "## Verdicts", "", md_table(summary), "",
        "Per cell group (all factors but the ablated one and seed). diff = treatment - control in the metric's "
        "units, with its 1 - 2α percentile-bootstrap CI (90% at α = 0.05, matching the one-sided tests); p: one-sided "
        "paired t-test against the margin (TOST for equivalence), Holm-adjusted across the cell groups of each part; "
        "trend: Spearman ρ of the favoured arm's advantage against L, one-sided. Fewer paired seeds than the "
        "hypothesis' min_pairs gives `insufficient evidence`, and so does a cell group where an arm is not clearly "
        f"above chance (its mean's 1 - 2α CI reaches chance, or the mean is within {CHANCE_MARGIN:g} point of it). mde: the "
        "minimum detectable effect of the paired one-sided t design at 80% power, from the observed sd of the "
        "paired differences and n; a `not supported` with an mde above its margin (or effect) is under-powered, "
        "and the note says how many seeds would resolve it.", "",
        md_table(pd.DataFrame(cells)),
    ])


def _effect(row: pd.Series) -> str:
    """Spearman rho for a trend row, Cohen's d_z for a paired comparison."""
    if not _missing(row["rho"]):
        return f"ρ={row['rho']:.3f}"
    return "" if _missing(row["d_z"]) else f"d_z={row['d_z']:.2f}"


TEST_TEXT = {
    "non_inferiority": "Non-inferiority of the {favours} arm (margin {margin:g})",
    "superiority": "Superiority of the {favours} arm",
    "equivalence": "Equivalence of the arms (within ±{margin:g})",
    "efficiency": "Metric per GMAC higher for the {favours} arm",
    "trend": "Advantage of the {favours} arm growing with L",
}


def _paragraphs(verdicts: list[Verdict]) -> str:
    blocks = ["## What the numbers say"]
    for verdict in verdicts:
        h = verdict.hypothesis
        main = verdict.rows[verdict.rows["part"] == h.test]
        text = [
            f"Scope: {h.scope.describe()}: {len(main)} cell group(s) with {int(main['n_pairs'].sum())} pair(s) of "
            f"{h.factor}={format_level(h.treatment)} (treatment) and {h.factor}={format_level(h.control)} (control); "
            f"α = {h.alpha:g}, at least {h.min_pairs} paired seeds per cell group."
        ]
        for part, frame in verdict.rows.groupby("part", sort=False):
            text.append(_part_sentence(h, part, frame, verdict.parts[part]))
        if verdict.absent:
            text.append(f"No record in scope is at {' or '.join(verdict.absent)} ({verdict.in_scope} record(s) in "
                        "scope): these records do not test it.")
        elif main.empty:
            text.append(f"No paired records fall in this scope ({verdict.in_scope} record(s) in scope).")
        text.append(f"Verdict: **{verdict.decision}**.")
        blocks += [f"### {h.id}: {h.claim}", " ".join(text)]
    if len(blocks) == 1:
        blocks.append("No hypothesis is declared.")
    return "\n\n".join(blocks)


def _part_sentence(h: Hypothesis, part: str, frame: pd.DataFrame, decision: str) -> str:
    counts = frame["decision"].value_counts()
    tally = ", ".join(f"{counts[d]} {d}" for d in ("supported", "not supported", INSUFFICIENT) if d in counts)
    head = TEST_TEXT[part].format(favours=h.favours, margin=h.margin)
    metric = frame["metric"].iloc[0]
    if part == "trend":
        numbers = "; ".join(f"ρ = {r['rho']:.3f} (p {_p_phrase(r['p'])}) for {r['cell']}" for _, r in frame.iterrows()
                            if not _missing(r["rho"]))
    else:
        tested = frame[frame["n_pairs"] > 0]["diff"]
        numbers = (f"treatment - control ranges from {tested.min():+.3f} to {tested.max():+.3f} {metric}"
                   if len(tested) else "")
    notes = sorted({n for n in frame["note"] if n})
    sentence = f"{head}: {tally} of {len(frame)} cell group(s)" + (f"; {numbers}" if numbers else "")
    sentence += (f" (insufficient where: {'; '.join(notes)})" if notes else "") + f". This part: {decision}."
    return sentence


def _task_sections(tasks: Sequence[TaskView], drawn: dict) -> str:
    blocks = ["## Results per task",
              "Each task compares the two arms of the first hypothesis with paired seeds there (named under its "
              "heading). Means ± sd over completed seeds; diff = treatment - control over paired seeds with its 95% "
              "bootstrap CI; GMACs per image at the evaluated size; throughput in evaluated images/s."]
    if not any(len(view.summary) for view in tasks):
        blocks.append("No completed record.")
    for view in tasks:
        if view.summary.empty:
            continue
        compared, frame = view.compared, view.summary
        c, t = compared.names["c"], compared.names["t"]
        first = frame.iloc[0]
        direction = "higher is better" if first["higher_is_better"] else "lower is better"
        metric = first["metric"]
        blocks += [f"### {view.task} ({first['task_kind']}; {metric}, {direction})",
                   f"Arms of {compared.factor}: {c} (control, {format_level(compared.control)}) and {t} (treatment, "
                   f"{format_level(compared.treatment)}).",
                   md_table(_results_table(frame, metric, compared.names)),
                   md_table(_cost_table(frame, metric, compared.names))]
        files = drawn.get(view.task, {})
        blocks.append(" ".join(f"![{view.task}: {kind}]({files[kind]})" for kind in ("gmacs", "bars") if kind in files))
    return "\n\n".join(blocks)


def _arms_section(runs: pd.DataFrame, hypotheses: Sequence[Hypothesis]) -> str:
    """Every arm of every cell group, whichever hypothesis compares it: its cost and its metric.

    An arm is a combination of the model family's record keys (MambaOut: ssm, scan, causal, match_macs)
    among those that vary within a task; so an iso-MAC control shows next to the two arms it sits
    between. Arms are named by the labels of a hypothesis whose factor is exactly those keys, else by
    the family switches' labels (plus key=true for any other key that is on).
    """
    family = _family(runs)
    done = runs[(runs["status"] == COMPLETED) & runs["value"].notna()] if len(runs) else runs
    keys = [f"model.{k}" for k in (family.record_keys if family is not None else ()) if f"model.{k}" in done]
    if done.empty or not any(done[k].astype(str).nunique() > 1 for k in keys):
        return ""
    cost = lambda frame, key: frame[key].astype(float).mean() if key in frame else math.nan  # noqa: E731
    blocks = ["## Arms and their cost",
              "Every arm of each cell group, whichever hypothesis compares it. Params, GMACs per image at the "
              "evaluated size, and the Gated CNN expansion ratio where the model states it; metric mean ± sd over "
              "completed seeds."]
    for task, frame in done.groupby("task", sort=True):
        varying = [k for k in keys if frame[k].astype(str).nunique() > 1]
        frame = frame.assign(arm=_arm_names(frame, varying, hypotheses, family))
        rows = []
        for (size, arm), group in frame.groupby(["task.image_size", "arm"], sort=False):
            values = group["value"].astype(float)
            rows.append({
                "model": group["model.name"].iloc[0], "size": size, "L": fmt(cost(group, "cost.seq_len"), ".0f"),
                "arm": arm, "params M": fmt(cost(group, "cost.params") / 1e6, ".4g"),
                "GMACs": fmt(cost(group, "cost.macs") / 1e9, ".4g"),
                "scan GMACs": fmt(cost(group, "cost.macs_ssm") / 1e9, ".4g"),
                "expansion": fmt(cost(group, "cost.expansion_ratio"), ".3g"),
                str(group["metric"].iloc[0]): fmt_mean(values.mean(), values.std(ddof=1), len(values)),
            })
        table = pd.DataFrame(rows).sort_values(["model", "L", "GMACs"], key=_numeric_first, kind="stable")
        blocks += [f"### {task}" + (f" ({', '.join(varying)} vary)" if varying else ""), md_table(table)]
    return "\n\n".join(blocks)


def _arm_names(frame: pd.DataFrame, varying: list[str], hypotheses: Sequence[Hypothesis],
               family: records.FamilyFacts | None) -> pd.Series:
    def own_name(row: Mapping[str, Any]) -> str:
        parts = []
        for key in varying:
            switch = family.labels(key.removeprefix("model.")) if family is not None else None
            if switch is not None:
                parts.append(switch[bool(row[key])])
            elif row[key] not in (False, None) and not _missing(row[key]):
                parts.append(f"{key}={format_level(row[key])}")
        return ", ".join(parts) or "as configured"

    codes = combination_codes(frame, varying)  # one name per distinct combination of the varying values
    named = {code: own_name({key: frame[key].iat[at] for key in varying})
             for code, at in pd.Series(np.arange(len(frame))).groupby(codes).first().items()}
    names = pd.Series([named[code] for code in codes], index=frame.index, dtype=object)
    exact = [h for h in hypotheses if h.labels and sorted(components(h.factor)) == sorted(varying)]
    if exact:
        levels = with_factor(frame, exact[0].factor)[exact[0].factor]
        for level, label in exact[0].labels.items():
            names[at_level(levels, level)] = label
    return names


def _numeric_first(column: pd.Series) -> pd.Series:
    converted = pd.to_numeric(column, errors="coerce")
    return converted if converted.notna().any() else column


def _results_table(frame: pd.DataFrame, metric: str, names: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({
        "cell group": frame["label"].map(_without_task), "L": column(frame["seq_len"], ".0f"),
        "L/τ": column(frame["seq_len"] / frame["tau"], ".2f"),
        f"{metric}, {names['c']}": [fmt_mean(r.mean_c, r.sd_c, r.n_c) for r in frame.itertuples()],
        f"{metric}, {names['t']}": [fmt_mean(r.mean_t, r.sd_t, r.n_t) for r in frame.itertuples()],
        "pairs": frame["n_pairs"], "diff [95% CI]": [fmt_ci(r.diff, r.ci_low, r.ci_high) for r in frame.itertuples()],
    })


def _cost_table(frame: pd.DataFrame, metric: str, names: dict[str, str]) -> pd.DataFrame:
    c, t = names["c"], names["t"]
    return pd.DataFrame({
        "cell group": frame["label"].map(_without_task),
        # significant digits: toy inputs cost a millionth of what ImageNet-size inputs do
        f"GMACs, {c}": column(frame["gmacs_c"], ".4g"), f"GMACs, {t}": column(frame["gmacs_t"], ".4g"),
        f"selective-scan GMACs, {t}": column(frame["gmacs_ssm_t"], ".4g"), "MAC overhead %": column(100 * frame["macs_overhead"], "+.1f"),
        f"params M, {c}": column(frame["params_c"], ".4g"), f"params M, {t}": column(frame["params_t"], ".4g"),
        f"{metric}/GMAC, {c}": column(frame["per_gmac_c"], ".5g"), f"{metric}/GMAC, {t}": column(frame["per_gmac_t"], ".5g"),
        f"img/s, {c}": column(frame["throughput_c"], ".1f"), f"img/s, {t}": column(frame["throughput_t"], ".1f"),
        f"throughput {t}/{c}": column(frame["throughput_ratio"], ".2f"),
        "Pareto-dominant": frame["dominant"].map({"treatment": t, "control": c, "neither": "neither", "": ""}),
    })


def _sequence_section(tasks: Sequence[TaskView], drawn: dict) -> str:
    blocks = ["## Sequence length",
              "Tokens L at stride 16 against τ = 6·D (D: stage-3 width); docs/study.md §2 calls a task long when L > τ. "
              "diff = treatment - control of the task's comparison (mean over paired seeds, 95% bootstrap CI); a "
              "crossover L* is where the treatment's mean advantage changes sign, interpolated linearly in log L "
              "between the two bracketing sizes; it is clear when the CIs at both of them exclude 0 (otherwise it "
              "may be noise around a null effect)."]
    swept = [view for view in tasks if len(view.points)]
    if not swept:
        blocks.append("No task was swept over two or more image sizes.")
        return "\n\n".join(blocks)
    for view in swept:
        task, frame, names = view.task, view.points, view.compared.names
        crossings = summaries.crossover_table(frame)
        table = pd.DataFrame({
            "series": frame["series_label"].map(_without_task), "image size": frame["image_size"],
            "L": frame["seq_len"], "L/τ": column(frame["seq_len"] / frame["tau"], ".2f"), "regime": frame["regime"],
            "pairs": frame["n_pairs"], "diff [95% CI]": [fmt_ci(r.diff, r.ci_low, r.ci_high) for r in frame.itertuples()],
        })
        found = crossings[crossings["task"] == task]
        crossing_table = pd.DataFrame({
            "series": found["series_label"].map(_without_task), "between L": found["between"],
            "L*": column(found["seq_len_star"], ".0f"), "τ": column(found["tau"], ".0f"),
            "L*/τ": column(found["ratio"], ".2f"), "direction": found["direction"],
            "CIs exclude 0 on both sides": found["clear"].map({True: "yes", False: "no"}),
        })
        no_change = "No sign change of the mean difference across the swept sizes."
        blocks += [f"### {task}", f"diff = {names['t']} - {names['c']}.", md_table(table), "Crossovers:",
                   md_table(crossing_table) if len(found) else no_change]
        if "length" in drawn.get(task, {}):
            blocks.append(f"![{task}: difference vs L]({drawn[task]['length']})")
    return "\n\n".join(blocks)


def _tuning_section(collection: Collection) -> str:
    """The tuning protocol from the tuner's summary (tuning.json) in each reported sweep folder that has
    one, when records came from a tuning study; the Optuna storage is never opened."""
    head = "## Tuning protocol"
    runs = collection.runs
    tuned = runs[runs["tuning.study"].notna()] if "tuning.study" in runs else runs.iloc[:0]
    if tuned.empty:
        return f"{head}\n\nNo record came from a tuning study."
    studies = sorted(str(s) for s in tuned["tuning.study"].unique())
    skipped = f"{head}\n\nRecords come from tuning studies {', '.join(studies)}; section skipped:"
    summaries = [s.path / SUMMARY_FILE for s in collection.sweeps if (s.path / SUMMARY_FILE).is_file()]
    if not summaries:
        return (f"{skipped} no {SUMMARY_FILE} in the reported sweep folders (the tuner writes it into its "
                "sweep's folder; report that sweep).")
    try:
        return f"{head}\n\n" + "\n".join(tuning_section(json.loads(p.read_text())) for p in summaries)
    except Exception as exc:  # noqa: BLE001 - a broken summary must not cost the rest of the report
        return f"{skipped} {type(exc).__name__}: {' '.join(str(exc).split())}"


def _with_arms(collection: Collection, compared: Comparison) -> pd.DataFrame:
    """The runs with their cell group (`cell`, `label`), `arm_key` ("t" | "c" | None) and `arm` (its name)."""
    factor = compared.factor
    runs = with_cells(with_factor(collection.runs, factor), cell_factors(collection.factors, factor))
    is_t, is_c = at_level(runs[factor], compared.treatment), at_level(runs[factor], compared.control)
    keys = ["t" if t else "c" if c else None for t, c in zip(is_t, is_c)]
    return runs.assign(arm_key=keys,
                       arm=[compared.names[k] if k else format_level(v) for k, v in zip(keys, runs[factor])])


def _curves_section(collection: Collection, workers: Workers, out: Path,
                    tasks: Sequence[TaskView]) -> tuple[str, list[Future]]:
    """One training-curve figure per cell group with curves (both arms of its task's comparison, every
    seed); the section, and the files being drawn."""
    views = [_with_arms(replace(collection, runs=collection.runs[collection.runs["task"] == view.task]), view.compared)
             for view in tasks]
    runs = pd.concat(views) if views else collection.runs.iloc[:0].assign(arm_key=None, arm=None, cell=None)
    names = {view.task: view.compared.names for view in tasks}
    runs = runs[runs["arm_key"].notna() & (runs["curve.points"].fillna(0) > 0)]
    blocks, files = ["## Training curves",
                     "Training loss (mean over each logging window) against optimizer step, every seed of both arms; "
                     "with several evaluations, the primary metric at each beside it."], []
    for index, (_, group) in enumerate(runs.groupby("cell", sort=True)):
        group = group.sort_values(["arm_key", "seed"], kind="stable").rename(columns={"arm_key": "arm", "arm": "arm_name"})
        curves = [_read_curve(Path(f).parent / name, collection) for f, name in zip(group["file"], group["curve.file"])]
        group, curves = group[[c is not None for c in curves]], [c for c in curves if c is not None]
        if not curves:
            continue
        label = group["label"].iloc[0]
        name = f"curves_{index:03d}_{figures.slug(label)[:60]}.png"
        files.append(workers.submit(figures.training_curves, group, curves, label, out, name, names[group["task"].iloc[0]]))
        blocks.append(f"![training curves: {label}]({name})")
    if not files:
        blocks.append("No record carries a training curve.")
    return "\n\n".join(blocks), files


def _read_curve(path: Path, collection: Collection) -> dict | None:
    """A run's curve.json, or None, with the reason added to the collection's problems (the rest of
    the report does not depend on it)."""
    try:
        curve = json.loads(path.read_text())
        if not isinstance(curve, dict) or not isinstance(curve.get("train"), list):
            raise ValueError("not a curve (expected an object with a 'train' list)")
        return curve
    except (OSError, ValueError) as exc:
        why = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({' '.join(str(exc).split())[:120]})"
        problem = pd.DataFrame([{"file": shown_path(path), "kind": INCOMPLETE,
                                 "problem": f"training curve {why}: the run's curve is left out of the figures"}])
        collection.problems = pd.concat([collection.problems, problem], ignore_index=True)
        return None


def _sanity_tables(runs: pd.DataFrame, names: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Completed runs whose training loss ended non-finite or no lower than it started, and cell groups
    whose seeds disagree wildly in one arm (sd more than SEED_SD_RATIO x the other arm's)."""
    done = runs[(runs["status"] == COMPLETED) & (runs["curve.points"].fillna(0) >= 2)]
    first, last = done["curve.first_loss"].astype(float), done["curve.last_loss"].astype(float)
    stuck = done[~np.isfinite(last) | (last >= first)]
    loss = pd.DataFrame({"run": stuck["run_id"], "cell group": stuck["label"], "arm": stuck["arm"],
                         "seed": stuck["seed"], "first loss": column(stuck["curve.first_loss"], ".4g"),
                         "last loss": column(stuck["curve.last_loss"], ".4g")})
    spread = []
    completed = runs[(runs["status"] == COMPLETED) & runs["arm_key"].notna() & runs["value"].notna()]
    for _, group in completed.groupby("cell", sort=True):
        sd = group.groupby("arm_key")["value"].agg(lambda v: float(np.std(v.astype(float), ddof=1)) if len(v) > 1 else np.nan)
        if {"t", "c"} <= set(sd.index) and sd.notna().all():
            for wide, other in (("t", "c"), ("c", "t")):
                if sd[wide] > SEED_SD_RATIO * sd[other]:
                    spread.append({"cell group": group["label"].iloc[0], "arm": names[wide],
                                   "sd over seeds": fmt(sd[wide], ".3g"), "other arm's sd": fmt(sd[other], ".3g")})
    return loss, pd.DataFrame(spread, columns=["cell group", "arm", "sd over seeds", "other arm's sd"])


class Listings:
    """Problem tables in report.md show their first LISTED_ROWS rows; a longer one is written whole to a
    CSV beside it (named in the Files section), so that the report still reads in a few screens."""

    PATTERNS = ("not_completed.csv", "stale.csv", "missing_pairs*.csv", "unreadable.csv")  # every name table() gets

    def __init__(self, out: Path) -> None:
        self.out, self.written = out, []
        for pattern in self.PATTERNS:  # an earlier report's, which this one may not rewrite
            for old in out.glob(pattern):
                old.unlink()

    def table(self, frame: pd.DataFrame, csv_name: str) -> str:
        if len(frame) <= LISTED_ROWS:
            return md_table(frame)
        atomic.write(self.out / csv_name, frame.to_csv(index=False))
        self.written.append(f"{csv_name} (all {len(frame)} rows of a problem table)")
        return (md_table(frame.head(LISTED_ROWS)) + f"\n\n... and {len(frame) - LISTED_ROWS} more rows: all "
                f"{len(frame)} in {csv_name}")


def _stale_block(runs: pd.DataFrame, listings: Listings) -> list[str]:
    """Records the code as it is now may not reproduce: computed at another commit, or from a dirty tree."""
    commit, _ = records.code_version()
    dirty = [d is True or d is np.True_ for d in values_of(runs["env.git_dirty"])]
    why = [records.staleness({"git_commit": c if isinstance(c, str) else None, "git_dirty": d}, commit)
           for c, d in zip(values_of(runs["env.git_commit"]), dirty)]
    stale = runs.assign(why=why)[[w is not None for w in why]]
    head = ["### Stale results"]
    if commit is None:
        return head + ["Not checked: the code running this report is not a git checkout."]
    if stale.empty:
        return head + [f"None: every record was computed at the current commit ({commit[:12]}) from a clean tree."]
    table = pd.DataFrame({"run": stale["run_id"], "cell group": stale["label"], "arm": stale["arm"],
                          "seed": stale["seed"], "why": stale["why"]})
    return head + [f"{len(stale)} record(s) the code at {commit[:12]} may not reproduce; `+rerun=stale` on their "
                   "sweep's command recomputes exactly these.", listings.table(table, "stale.csv")]


def _problems_section(collection: Collection, pairing: Pairing, verdicts: list[Verdict], compared: Comparison,
                      listings: Listings) -> str:
    runs = _with_arms(collection, compared)
    bad = runs[runs["status"] != COMPLETED]
    blocks = ["## Problems", "### Failed, diverged and pruned runs"]
    if len(bad):
        counts = pd.crosstab([runs["label"], runs["arm"]], runs["status"])
        counts = counts.reindex(columns=list(records.STATUSES), fill_value=0).reset_index()
        counts = counts[counts[list(NON_COMPLETED)].sum(axis=1) > 0].rename(columns={"label": "cell group"})
        failed = pd.DataFrame({"run": bad["run_id"], "cell group": bad["label"], "arm": bad["arm"], "seed": bad["seed"],
                               "status": bad["status"], "error": bad["error"].fillna("").map(lambda e: e[:160])})
        blocks += ["Counts per cell group and arm:", md_table(counts), listings.table(failed, "not_completed.csv")]
    else:
        blocks.append("No failed, diverged or pruned run.")
    blocks += _stale_block(runs, listings)
    blocks += ["### Missing pairs", "Cell groups where one arm has a completed seed and the other does not; run the "
               "overrides shown to fill them.", listings.table(_unpaired_table(pairing), "missing_pairs.csv")]
    for verdict in verdicts:
        h = verdict.hypothesis
        if (h.factor, h.treatment, h.control) != (compared.factor, compared.treatment, compared.control):
            blocks += [f"For {h.id} ({h.factor}: {format_level(h.treatment)} vs {format_level(h.control)}):",
                       listings.table(_unpaired_table(verdict.pairing), f"missing_pairs_{figures.slug(h.id)}.csv")]
    loss, spread = _sanity_tables(runs, compared.names)
    blocks += ["### Sanity",
               "Completed runs whose training loss ended non-finite or no lower than it started (they did not train):",
               md_table(loss) if len(loss) else "None.",
               f"Cell groups where one arm's seeds disagree far more than the other's (sd > {SEED_SD_RATIO:g}x):",
               md_table(spread) if len(spread) else "None."]
    blocks += ["### Unreadable, missing or incomplete records", listings.table(collection.problems, "unreadable.csv")]
    if collection.notes:
        blocks += ["### Notes", "\n".join(f"- {note}" for note in collection.notes)]
    return "\n\n".join(blocks)


def _unpaired_table(pairing: Pairing) -> pd.DataFrame:
    frame = pairing.unpaired
    return pd.DataFrame({"cell group": frame["label"], "seed": frame["seed"], "have": frame["present"],
                         "missing": frame["missing"], "missing arm's record": frame["missing_status"],
                         "overrides to fill": frame["overrides"].map(lambda o: f"`{o}`")})


def _files_section(drawn: dict, curve_files: list[str], listings: list[str]) -> str:
    names = [RESULTS_CSV + " (one row per run)", VERDICTS_CSV + " (one row per hypothesis part and cell group)"]
    names += [name for task in sorted(drawn) for name in drawn[task].values()] + curve_files + listings
    return "## Files\n\n" + "\n".join(f"- {name}" for name in names)


# --- command line --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`ablate report`: print the report path; 1 with a one-line message when the input is unusable, 2 when
    the report cannot be written (a read-only or full disk: the previous report.md is left as it was)."""
    parser = argparse.ArgumentParser(prog="ablate report",
                                     description="Test the hypotheses on sweep records and write a report.")
    parser.add_argument("sweep_dirs", nargs="*", type=Path, metavar="SWEEP_DIR", help="results/sweeps/<sweep> folder")
    parser.add_argument("--results", type=Path, metavar="ROOT", help="also read every record under ROOT/runs/")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default reports/<sweep>/)")
    parser.add_argument("--hypotheses", type=Path, metavar="DIR", help="hypothesis YAMLs (default conf/hypothesis)")
    parser.add_argument("--template", type=Path, metavar="FILE",
                        help="a Jinja2 template of your own for report.md (default: ablate/analysis/templates/report.md.j2)")
    parser.add_argument("--timings", action="store_true",
                        help="also print the seconds spent reading records, analysing and rendering (stderr)")
    args = parser.parse_args(argv)
    if not args.sweep_dirs and args.results is None:
        parser.error("give at least one SWEEP_DIR or --results ROOT")
    clock = Stopwatch()
    try:
        path = write_report(args.sweep_dirs, args.out, args.hypotheses, results_root=args.results,
                            template=args.template, stopwatch=clock)
    except ValueError as exc:
        print(f"ablate report: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # atomic.write names errno and path; mkdir's own errors carry the path too
        print(f"ablate report: cannot write the report: {exc}", file=sys.stderr)
        return 2
    print(path)
    if args.timings:
        print("ablate report: timings: " + ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in clock.seconds.items()),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
