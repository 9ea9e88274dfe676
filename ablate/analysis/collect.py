"""Collect result records into one table, and pair the two arms of an ablation.

    collect([sweep_dir, ...], results_root)  -> Collection (runs table, factors, problems, sweeps)
    pair(runs, factors, "model.ssm", True, False) -> Pairing (matched pairs, unpaired cells)

A sweep folder (results/sweeps/<sweep>/) holds one job folder per Hydra job; its cell.json points to
the record (<run_dir>/result.json). A results root holds every record (results/runs/*/result.json).
Nothing is dropped silently: an unreadable or schema-mismatched record, a job folder without a
cell.json and a cell.json whose record is missing all become rows of `Collection.problems`.
"""
from __future__ import annotations

import functools
import gc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from ablate import records
from ablate.records import RESULT_FILE  # noqa: F401 - also the report's name for it

CELL_FILE = "cell.json"
# One line per multirun (leg) run into a sweep folder: {"command", "started_at"}; Hydra's multirun.yaml
# keeps only the last leg's.
LEGS_FILE = "legs.jsonl"
# Factors shown in every cell label, whether or not they vary (the rest are shown when they vary).
LABEL_FACTORS = ("task", "model.name", "task.image_size")
COMPLETED = records.Status.COMPLETED
PROBLEM_KINDS = UNREADABLE, MISSING_RECORD, DUPLICATE, INCOMPLETE = (
    "unreadable record", "missing record", "duplicate run_id", "incomplete record")
HEAD_COLUMNS = (
    "run_id", "sweep", "status", "file", "task_kind", "metric", "higher_is_better", "chance", "value", "error",
    "overrides", "family",
)
ENV_KEYS = ("git_commit", "git_dirty", "device", "hostname", "started_at", "finished_at")
TUNING_KEYS = ("study", "trial", "storage", "role")  # of the record's tuning block, as columns
CURVE_KEYS = ("file", "points", "first_loss", "last_loss")  # the record's curve summary
INIT_KEYS = ("upstream_run_id", "checkpoint", "sha256")  # where a dense cell's backbone weights came from
# Columns present even when no record has them (the analysis reads them).
ALWAYS_COLUMNS = (
    *(f"cost.{k}" for k in records.NUMERIC_COST), *(f"tuning.{k}" for k in TUNING_KEYS),
    *(f"env.{k}" for k in ENV_KEYS), *(f"curve.{k}" for k in CURVE_KEYS), *(f"init.{k}" for k in INIT_KEYS),
)


@dataclass(frozen=True)
class SweepInfo:
    """One sweep folder as found on disk."""

    name: str
    path: Path
    jobs: int  # job folders (with a cell.json or a .hydra/ folder)
    commands: tuple[str, ...]  # the multirun command of each leg run into this folder, oldest first


@dataclass
class Collection:
    """Every record read, one row each, plus what could not be read."""

    runs: pd.DataFrame  # one row per record (any status); columns described in `_row`
    factors: list[str]  # factor columns, ablated factor and seed included
    problems: pd.DataFrame  # columns: file, kind (one of PROBLEM_KINDS), problem
    sweeps: list[SweepInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the reader should know (one line each)


def shown_path(path: Path | str) -> str:
    """A path relative to the current directory when it lies below it (stable, short in tables).

    String operations, not pathlib: a report shows one per record (100,000 of them)."""
    text, cwd = os.path.abspath(path), os.getcwd()
    if text == cwd:
        return "."
    below = os.path.join(cwd, "")
    return text[len(below):] if text.startswith(below) else text


def collect(
    sweep_dirs: Sequence[Path] = (), results_root: Path | None = None, extra_factors: Sequence[str] = ()
) -> Collection:
    """Read the records of some sweeps and/or of a whole results folder into one table.

    `extra_factors`: config keys to carry as factor columns even where no job overrode them
    (e.g. keys a hypothesis scope filters on); their values come from each record's config.
    """
    problems: list[tuple[str, str, str]] = []
    sources: list[Path] = []
    sweeps = []
    for sweep_dir in sweep_dirs:
        info, found = _read_sweep(Path(sweep_dir), problems)
        sweeps.append(info)
        sources.extend(found)
    if results_root is not None:
        root = Path(results_root)
        if not root.is_dir():
            raise ValueError(f"--results {root}: not a folder (expected a results root with runs/*/{RESULT_FILE})")
        sources.extend(_records_below(root / "runs"))
    notes: list[str] = []
    collecting = gc.isenabled()
    # JSON and the table's rows are trees, never cycles: a collection while the records are read and
    # tabled would walk every one of them for nothing
    gc.disable()
    try:
        runs, factors = _table(_load(sources, problems), extra_factors, problems, notes)
    finally:
        if collecting:
            gc.enable()
    problem_frame = pd.DataFrame(sorted(set(problems)), columns=["file", "kind", "problem"])
    return Collection(runs, factors, problem_frame, sweeps, notes)


def _read_sweep(sweep_dir: Path, problems: list[tuple[str, str, str]]) -> tuple[SweepInfo, list[Path]]:
    if not sweep_dir.is_dir():
        raise ValueError(f"{sweep_dir}: sweep folder does not exist (expected results/sweeps/<sweep>/)")
    found = []
    jobs = 0
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        cell_path = job_dir / CELL_FILE
        if cell_path.exists():
            jobs += 1
            try:
                cell = json.loads(cell_path.read_text())
                result = Path(cell["run_dir"]) / RESULT_FILE
                overrides = " ".join(cell.get("overrides", []))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problem = f"unreadable cell pointer ({type(exc).__name__}: {exc})"
                problems.append((shown_path(cell_path), MISSING_RECORD, problem))
                continue
            if result.exists():
                found.append(result)
            else:
                problem = f"job {job_dir.name} points here, no record ({overrides})"
                problems.append((shown_path(result), MISSING_RECORD, problem))
        elif (job_dir / ".hydra").is_dir():
            jobs += 1
            problem = f"no {CELL_FILE}: the job stopped before its cell started ({' '.join(_job_overrides(job_dir))})"
            problems.append((shown_path(job_dir), MISSING_RECORD, problem))
    return SweepInfo(sweep_dir.name, sweep_dir, jobs, _commands(sweep_dir)), found


def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        return [str(item) for item in yaml.safe_load(path.read_text()) or []]
    except (OSError, yaml.YAMLError):
        return []


def command_line(hydra: Mapping[str, Any]) -> str:
    """`python run.py -m OVERRIDES` from a multirun's hydra config: its Hydra overrides (e.g.
    hydra/launcher=local; not hydra.mode, which -m sets), then its task overrides."""
    given = hydra.get("overrides") or {}
    overrides = [o for o in given.get("hydra") or [] if not str(o).startswith("hydra.mode=")] + list(given.get("task") or [])
    job = (hydra.get("job") or {}).get("name") or "run"
    return " ".join([f"python {job}.py -m", *map(str, overrides)])


def record_leg(sweep_dir: Path, command: str, started_at: str) -> None:
    """Append one multirun's command (already redacted) to the sweep folder's legs file."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LEGS_FILE, "a") as handle:  # one short write per leg: lines never interleave
        handle.write(json.dumps({"command": command, "started_at": started_at}) + "\n")


def _commands(sweep_dir: Path) -> tuple[str, ...]:
    """Every leg's command from the legs file, else the one in Hydra's multirun.yaml (a sweep run
    before legs were recorded), else none."""
    legs = sweep_dir / LEGS_FILE
    if legs.exists():
        try:
            return tuple(json.loads(line)["command"] for line in legs.read_text().splitlines() if line.strip())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return (f"(unreadable {LEGS_FILE}: {type(exc).__name__}: {exc})",)
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return ()
    try:
        hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    except (OSError, yaml.YAMLError) as exc:
        return (f"(unreadable {path.name}: {' '.join(str(exc).split())})",)
    return (command_line(hydra),)


def _records_below(runs: Path) -> list[str]:
    """runs/*/result.json, as paths in text (a results folder of 100,000 records: no Path per record)."""
    try:
        entries = list(os.scandir(runs))
    except FileNotFoundError:
        return []
    found = (os.path.join(entry.path, RESULT_FILE) for entry in entries if entry.is_dir())
    return [path for path in found if os.path.isfile(path)]


def _load(sources: Iterable[Path | str], problems: list[tuple[str, str, str]]) -> list[tuple[str, dict]]:
    """Read each record once, in path order; a run_id met twice in different files keeps the first (reported)."""
    seen: dict[str, str] = {}
    loaded = []
    for path in sorted({os.path.abspath(p) for p in sources}, key=lambda text: text.split(os.sep)):
        try:
            record = records.read(path)
        except ValueError as exc:
            problems.append((shown_path(path), UNREADABLE, str(exc).removeprefix(f"{path}: ")))
            continue
        if record["run_id"] in seen:
            problem = f"run_id {record['run_id']} also in {shown_path(seen[record['run_id']])}; that one was used"
            problems.append((shown_path(path), DUPLICATE, problem))
            continue
        seen[record["run_id"]] = path
        loaded.append((path, record))
    return loaded


def _table(
    loaded: list[tuple[str, dict]], extra_factors: Sequence[str], problems: list[tuple[str, str, str]], notes: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    factor_keys = sorted({key for _, record in loaded for key in record["factors"]} | set(extra_factors))
    factor_values = [_complete_factors(record, factor_keys) for _, record in loaded]
    notes += _predated_notes([record for _, record in loaded], factor_keys)
    extra = _distinguishing_keys([record for _, record in loaded], factor_values)
    if extra:
        notes.append(
            "records with the same factors differed in their configs; these config keys were added as "
            f"factors to tell them apart: {', '.join(extra)}"
        )
        factor_values = [_complete_factors(record, factor_keys + extra) for _, record in loaded]
    factors = _ordered_factors(factor_keys + extra)
    family_json = _family_json()
    rows = [_row(path, record, values, problems, family_json) for (path, record), values in zip(loaded, factor_values)]
    runs = pd.DataFrame(rows, columns=_columns(rows, factors))
    if len(runs):
        runs = runs.sort_values(["task", "model.name", "cost.seq_len", "seed", "run_id"], kind="stable")
    return runs.reset_index(drop=True), factors


def _ordered_factors(keys: Iterable[str]) -> list[str]:
    standard = list(records.STANDARD_FACTORS)
    return standard + sorted(set(keys) - set(standard))


def _complete_factors(record: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The record's factors, plus the config value of every factor key it did not override (a setting
    its family gained after it was written: the value it had then, records.ADDED_SETTINGS)."""
    values = dict(record["factors"])
    missing = [key for key in keys if key not in values]
    if missing:
        # records.factors looks a key up in the config and makes it a scalar the way the runner did
        looked_up = records.factors(record["config"], [f"{key}=" for key in missing])
        predated = records.predated_settings(record)
        values.update({key: predated[key] if key in predated else looked_up.get(key) for key in missing})
    return values


def _predated_notes(loaded: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """One line per factor that some records predate, saying how they were read."""
    counts: dict[tuple[str, Any], int] = {}
    for record in loaded:
        for key, value in records.predated_settings(record).items():
            if key in keys and key not in record["factors"]:
                counts[(key, value)] = counts.get((key, value), 0) + 1
    return [f"{n} record(s) were written before {key} existed: read as {key}={format_level(value)}, the only "
            f"behaviour there was then" for (key, value), n in sorted(counts.items(), key=str)]


# json.dumps(value, sort_keys=True, default=str), without building an encoder per call (one per record)
_sorted_json = json.JSONEncoder(sort_keys=True, default=str).encode


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, Mapping):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: _sorted_json(node)}


def _distinguishing_keys(loaded: list[dict], factor_values: list[dict]) -> list[str]:
    """Config keys that differ between records whose factors are all equal.

    Such records are different cells (their run_ids differ) that the factors cannot tell apart,
    e.g. two experiments run with different defaults; pairing needs them apart.
    """
    groups: dict[str, list[dict]] = {}
    for record, values in zip(loaded, factor_values):
        groups.setdefault(_sorted_json(values), []).append(record)
    keys: set[str] = set()
    for group in groups.values():
        if len(group) < 2:
            continue
        flats = [_flatten(records.semantic_config(record["config"])) for record in group]
        for key in set().union(*flats):
            if len({flat.get(key) for flat in flats}) > 1:
                keys.add(key)
    return sorted(keys)


@functools.lru_cache(maxsize=None)
def _column(prefix: str, key: str) -> str:
    return f"{prefix}.{key}"  # one string per metric or cost key, not one per record


def _prefixed(prefix: str, keys: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((key, _column(prefix, key)) for key in keys)


_BLOCK_COLUMNS = {block: _prefixed(block, keys) for block, keys in
                  (("tuning", TUNING_KEYS), ("env", ENV_KEYS), ("curve", CURVE_KEYS), ("init", INIT_KEYS))}


def _row(path: str, record: Mapping[str, Any], factors: Mapping[str, Any], problems: list,
         family_json: Callable[[Any], str]) -> dict[str, Any]:
    """One runs-table row: identity, factors, primary metric value, metrics.*, cost.*, env.*."""
    task = record["task"]
    metric = task.get("metric")
    value = record["metrics"].get(metric) if record["status"] == COMPLETED else None
    error = record.get("error") or {}
    row: dict[str, Any] = {
        "run_id": record["run_id"], "sweep": record["sweep"], "status": record["status"],
        "file": shown_path(path), "task_kind": task.get("kind"), "metric": metric,
        "higher_is_better": bool(task.get("higher_is_better", True)), "chance": task.get("chance"), "value": value,
        "error": f"{error.get('type', '')}: {error.get('message', '')}" if error else None,
        "overrides": list(record["overrides"]),
        # the model family's facts as JSON text (a scalar, so the table groups and compares it); None in records
        # written before the block existed
        "family": family_json(record["family"]) if record.get("family") else None,
    }
    row.update(factors)
    row.update({_column("metrics", k): v for k, v in record["metrics"].items()})
    cost = record["cost"] or {}
    row.update({_column("cost", k): v if not isinstance(v, (list, dict)) else json.dumps(v) for k, v in cost.items()})
    for block, columns in _BLOCK_COLUMNS.items():
        values = record.get(block) or {}  # null, or absent in records written before the block existed
        row.update({column: values.get(key) for key, column in columns})
    if record["status"] == COMPLETED:
        lacking = [k for k in ("params", "macs", "macs_ssm", "seq_len", "tau") if cost.get(k) is None]
        if lacking:
            problems.append((shown_path(path), INCOMPLETE, f"completed record lacks cost {', '.join(lacking)}"))
    return row


def _family_json() -> Callable[[Any], str]:
    """_sorted_json for the family blocks of records in turn: a block equal to the one before (a family
    is shared by every record of a study) reuses its text. Equal blocks have equal text: a block holds
    strings only (FamilyFacts), where == cannot confuse true with 1."""
    last: list = [None, None]

    def encode(block: Any) -> str:
        if block != last[0]:
            last[:] = [block, _sorted_json(block)]
        return last[1]
    return encode


def _columns(rows: list[dict], factors: list[str]) -> list[str]:
    """Fixed head, the factors, then every metrics./cost./env./tuning./curve./init. column (the analysed ones always)."""
    present = {key for row in rows for key in row} | set(ALWAYS_COLUMNS)
    grouped = sorted(k for k in present if k.startswith(("metrics.", "cost.", "tuning.", "env.", "curve.", "init.")))
    return list(HEAD_COLUMNS) + factors + grouped


# --- pairing -------------------------------------------------------------------------------------

# Columns that differ between the arms of a pair; in the pairs table they carry _t / _c suffixes.
ARM_COLUMNS = ("run_id", "v", "cost.macs", "cost.macs_ssm", "cost.params", "cost.eval_throughput", "cost.train_throughput")


@dataclass
class Pairing:
    """Treatment and control records matched on every other factor, seed included."""

    factor: str
    treatment: Any
    control: Any
    cell_factors: list[str]  # the factors a cell group is made of (not the ablated one, not seed)
    pairs: pd.DataFrame  # one row per matched (cell, seed): the treatment row, arm columns suffixed _t/_c, diff
    unpaired: pd.DataFrame  # columns: cell, label, seed, present, missing, missing_status, overrides


# A compound factor names several keys whose levels change together: "model.ssm+model.match_macs"
# at level "false+true" is the SSM-off arm widened to iso-MAC. Its arms differ in every component.
COMPOUND = "+"


def components(factor: str) -> list[str]:
    return factor.split(COMPOUND)


def cell_factors(factors: Sequence[str], factor: str) -> list[str]:
    """Factors a cell group is made of: all but the ablated one(s) and seed."""
    return [f for f in factors if f not in (factor, *components(factor), "seed")]


def series_factors(pairing: Pairing) -> list[str]:
    """A series is a cell group without its image size: the axis along which L is swept."""
    return [k for k in pairing.cell_factors if k != "task.image_size"]


def label_keys(runs: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The cell factors worth showing: the standard label factors, plus those that vary."""
    return [k for k in keys if k in LABEL_FACTORS or (k in runs and runs[k].astype(str).nunique() > 1)]


def with_cells(runs: pd.DataFrame, keys: Sequence[str], key: str = "cell", label: str = "label") -> pd.DataFrame:
    """Add column `key` (a canonical key of the given factors) and `label` (its readable part)."""
    if not len(runs):
        return runs.assign(**{key: [], label: []})
    keys, shown = list(keys), label_keys(runs, keys)
    group = combination_codes(runs, keys)  # 0..n-1, one per distinct combination: a study has far fewer
    first = pd.Series(np.arange(len(runs))).groupby(group).first()  # cells than records; each is named once
    cells, labels = np.empty(len(first), dtype=object), np.empty(len(first), dtype=object)
    for code, at in first.items():
        row = {k: runs[k].iat[at] for k in keys}
        cells[code], labels[code] = json.dumps([[k, row[k]] for k in keys], default=str), cell_label(row, shown)
    return runs.assign(**{key: cells[group], label: labels[group]})


def combination_codes(runs: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """An int per row, equal where the rows' values of `keys` are equal (True and 1 apart, lists by content)."""
    if not keys:
        return np.zeros(len(runs), dtype=np.int64)
    try:  # each column's values and, in a column of mixed objects, their types; factorized in C
        parts = [pd.factorize(runs[k].map(type))[0] for k in keys if runs[k].dtype == object]
        parts += [pd.factorize(runs[k])[0] for k in keys]
    except TypeError:  # an unhashable value (a list): tokens made in Python
        return pd.factorize(pd.Series([_level_token(values) for values in zip(*(values_of(runs[k]) for k in keys))],
                                      dtype=object))[0]
    return pd.DataFrame(np.column_stack(parts)).groupby(list(range(len(parts))), sort=False).ngroup().to_numpy()


def _level_token(values: Iterable[Any]) -> tuple:
    """A hashable key of a combination of factor values; the type keeps True and 1 different levels."""
    return tuple((type(v), _frozen(v)) for v in values)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a factor value (a list, e.g. an image size, as a tuple; a dict as its items)."""
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in sorted(value.items()))
    return tuple(map(_frozen, value)) if isinstance(value, list) else value


def cell_label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={format_level(row[k])}" for k in keys)


def format_level(value: Any) -> str:
    """A factor value the way a Hydra override writes it (true/false, not True/False)."""
    return str(value).lower() if isinstance(value, (bool, np.bool_)) else str(value)


def with_factor(runs: pd.DataFrame, factor: str) -> pd.DataFrame:
    """`runs` with a `factor` column: a compound factor's levels joined ("false+true"); null where no
    record carries it (e.g. an empty sweep), so that nothing is at either level of it."""
    if factor in runs:
        return runs
    keys = components(factor)
    if len(keys) > 1 and all(k in runs for k in keys):
        joined = [COMPOUND.join(map(format_level, levels)) for levels in zip(*(values_of(runs[k]) for k in keys))]
        return runs.assign(**{factor: pd.Series(joined, index=runs.index, dtype=object)})
    return runs.assign(**{factor: None})


def pair(
    runs: pd.DataFrame, factors: Sequence[str], factor: str, treatment: Any, control: Any, value: str = "value",
    carry: Sequence[str] = (),
) -> Pairing:
    """Match completed treatment and control records that agree on every other factor and seed.

    `value` names the compared column (the primary metric by default); in the pairs it is `v_t`
    and `v_c`, and `diff` = v_t - v_c. A record counts only when it completed and has that value.
    Each column of `carry` comes along for both arms, as `<column>_t` and `<column>_c`.
    """
    keys = cell_factors(factors, factor)
    runs = with_cells(with_factor(runs, factor), keys).assign(v=runs[value] if value in runs else None)
    runs = runs.assign(**{column: None for column in carry if column not in runs})
    # Search trials of a tuning study (role "tune") are not evidence: only final runs and plain jobs pair.
    search = runs["tuning.role"].eq("tune") if "tuning.role" in runs else False
    usable = runs[(runs["status"] == COMPLETED) & runs["v"].notna() & ~search]
    treated = usable[at_level(usable[factor], treatment)]
    controls = usable[at_level(usable[factor], control)]
    on = ["cell", "seed"]
    arm_columns = list(dict.fromkeys([*ARM_COLUMNS, *carry]))
    pairs = treated.merge(controls[on + arm_columns], on=on, suffixes=("_t", "_c"))
    pairs["diff"] = pairs["v_t"].astype(float) - pairs["v_c"].astype(float)
    unpaired = pd.concat([
        _unpaired(treated, controls, runs, factor, control, "treatment", "control"),
        _unpaired(controls, treated, runs, factor, treatment, "control", "treatment"),
    ], ignore_index=True).sort_values(["cell", "seed", "missing"], kind="stable")
    return Pairing(factor, treatment, control, keys, _sorted(pairs), unpaired.reset_index(drop=True))


def values_of(column: pd.Series) -> list:
    """A column's values as a list (iterating a pandas string column itself costs a Python call per value)."""
    return column.to_numpy(dtype=object).tolist()


def at_level(column: pd.Series, level: Any) -> pd.Series:
    """Equality that keeps booleans apart from numbers (True is not the integer 1 here)."""
    if column.dtype == object:
        is_bool = column.map(type).isin((bool, np.bool_)).to_numpy(dtype=bool)
    else:
        is_bool = np.full(len(column), column.dtype == bool)
    if level is None or isinstance(level, (list, dict)):  # no elementwise == in pandas for these
        equal = np.array([type(v) is type(level) and v == level for v in column], dtype=bool)
    else:
        equal = (column == level).to_numpy(dtype=bool)
    same = equal & (is_bool if isinstance(level, (bool, np.bool_)) else ~is_bool)
    return pd.Series(same, index=column.index, dtype=bool)


def _unpaired(
    present: pd.DataFrame, other: pd.DataFrame, runs: pd.DataFrame, factor: str, missing_level: Any,
    present_arm: str, missing_arm: str,
) -> pd.DataFrame:
    """Cells of `present` whose partner in the other arm is absent or did not complete."""
    have = set(zip(values_of(other["cell"]), values_of(other["seed"])))
    listed = zip(*(values_of(present[c]) for c in ("cell", "label", "seed", "overrides")))
    lonely = [(cell, label, seed, overrides) for cell, label, seed, overrides in listed if (cell, seed) not in have]
    columns = ["cell", "label", "seed", "present", "missing", "missing_status", "overrides"]
    if not lonely:
        return pd.DataFrame(columns=columns)
    partners = runs[at_level(runs[factor], missing_level)]
    status: dict[tuple, str] = {}  # (cell, seed) -> the first partner record's status
    for cell, seed, record_status in zip(*(values_of(partners[c]) for c in ("cell", "seed", "status"))):
        status.setdefault((cell, seed), _status_text(record_status))
    rows = [{
        "cell": cell, "label": label, "seed": seed, "present": present_arm, "missing": missing_arm,
        "missing_status": status.get((cell, seed), "no record"),
        "overrides": fill_overrides(tuple(overrides), factor, missing_level),
    } for cell, label, seed, overrides in lonely]
    return pd.DataFrame(rows, columns=columns)


def _status_text(status: str) -> str:
    return "completed without the compared metric" if status == COMPLETED else str(status)


@functools.lru_cache(maxsize=65536)
def fill_overrides(overrides: tuple[str, ...], factor: str, level: Any) -> str:
    """The present arm's overrides with the ablated factor (each component of a compound one) switched:
    the command that fills a gap. Cached: a report pairs the same records for several hypotheses."""
    items = list(overrides)
    keys, levels = components(factor), format_level(level).split(COMPOUND)
    for key, value in reversed(list(zip(keys, levels if len(keys) > 1 else [format_level(level)]))):
        switched = f"{key}={value}"
        items = [switched if records.override_parts(item)[0] == key else item for item in items]
        if switched not in items:
            items.insert(0, switched)
    return " ".join(items)


def _sorted(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs.sort_values(["task", "model.name", "cost.seq_len", "label", "seed"], kind="stable").reset_index(drop=True)
