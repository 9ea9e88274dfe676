"""Result records: one `result.json` per job, the only thing the analysis reads.

Where things live (``paths.results``, default ``./results``):

    results/runs/<run_id>/result.json     the record of one cell (content-addressed, shared by sweeps)
    results/runs/<run_id>/...             checkpoint, wandb run, train log of that cell
    results/sweeps/<sweep>/<job>/cell.json  {"run_id", "run_dir", "overrides"}: which cells a sweep has

Schema ``ablate.result/1`` (all keys always present; values may be null where stated):

    schema      "ablate.result/1"
    run_id      16 hex chars: sha256 of the resolved config minus non-semantic keys (paths and
                task.data_root, logger, sweep name, device, workers, progress, rerun) -> the same cell
                always gets the same id, on any machine. Keys the model does not use (its family's
                inert keys: MambaOut's model.scan, d_state, dt_rank while model.ssm=false) are held
                at their defaults in `config` (ablate/cell.py), so they do not make another cell
    sweep       sweep name the job ran under (the cell may be shared by several sweeps)
    status      "completed" | "failed" | "diverged" | "pruned" (a tuning trial stopped early) | "skipped"
                (task.backbone_from: its upstream cell did not complete; `error` says why)
    error       null | {"type": str, "message": str, "traceback": str (last ~30 lines)}
    config      the resolved job config (dict)
    overrides   the job's Hydra overrides (list of "key=value")
    factors     flat {key: scalar}: always model.name, task, task.image_size ("HxW"), seed, and the model
                family's record keys (MambaOut: model.ssm, model.scan); plus every other key the job
                overrode (dotted, value as scalar/str)
    task        {"name", "kind", "metric", "higher_is_better", "chance": the primary metric of a model
                that guesses (100 / classes for top-1) | null where none exists (AP, mIoU)}
    metrics     {name: float} final evaluation metrics ({} if the job failed before evaluating)
    data        the task's data_summary() after training ({} before): classification gives
                {"train_images", "val_images", "corrupt_train_images" (distinct undecodable training
                files replaced by the next file, counted since this process started)}; a record
                written before this block existed lacks it
    curve       {"file": "curve.json" (beside the record: {"train": [[step, mean loss since the previous
                point, lr], ...], "eval": [[step, {metric: value}], ...]}), "points": int, "first_loss",
                "last_loss": float | null}; absent in records written before it existed
    cost        {"params": int, "macs": int, "macs_ssm": int  (per image at the evaluated size),
                 "input_size": [H, W], "seq_len": int (tokens of the stage-3 map, ceil(H/16) x ceil(W/16)), "tau": int (6 x stage-3
                 width), "train_throughput": img/s | null, "eval_throughput": img/s | null,
                 "peak_memory_mb": float | null, "wall_seconds": float, "steps": int, ...task extras}
    tuning      null | {"study", "trial", "storage", "role": "tune"|"final", "params": [tuned keys]} when the
                job ran for a tuning study (tuned keys are left out of `factors`)
    env         {"ablate", "git_commit", "git_dirty" (uncommitted changes to tracked files), "torch", "timm",
                 "python", "device", "hostname", "slurm_job_id", "started_at", "finished_at"}  (ISO-8601 UTC)
    checkpoint_set_aside  null | {"file", "why"}: the checkpoint this attempt found it could not resume
                from (unreadable, unsafe, lacking keys or shapes, a step outside the plan, another cell's),
                moved to history/ (the file named) before the cell trained from step 0; absent in
                records written before it existed
    init        null (weights from the model's init) | {"upstream_run_id": the cell whose final checkpoint
                the backbone started from (task.backbone_from) or null (task.backbone_ckpt, a user's file),
                "checkpoint": path | null, "sha256": of that file | null}; a skipped cell has the upstream
                run id alone; absent in records written before it existed
    family      {"name", "record_keys": [model keys every record's factors carry], "switches": {key: [arm
                name when false, when true]}}: what the report needs of the model family, so that it never
                imports the models; null for an unknown variant. A record written before this block
                existed lacks it: its arms are then named key=level.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping

from ablate import atomic

SCHEMA = "ablate.result/1"
RESULT_FILE = "result.json"  # a cell's record, in results/runs/<run_id>/
CHECKPOINT_FILE = "checkpoint.pt"  # a cell's latest (finally its last) training state, beside its record


class Status(str, Enum):
    """A record's `status`. A str: it compares equal to the text a record holds, and is written as it."""

    COMPLETED = "completed"
    FAILED = "failed"
    DIVERGED = "diverged"  # the training loss became non-finite
    PRUNED = "pruned"  # a tuning trial stopped early
    SKIPPED = "skipped"  # a downstream cell whose upstream cell did not complete (ablate.chain)

    __str__ = str.__str__  # f"{Status.FAILED}" is "failed"


STATUSES = tuple(s.value for s in Status)
TASK_KINDS = ("classification", "detection", "segmentation")  # task.kind
RECORD_KEYS = (
    "schema", "run_id", "sweep", "status", "error", "config", "overrides", "factors", "task",
    "metrics", "cost", "tuning", "env",
)
# Config keys that do not change what a cell computes; excluded from the run_id hash.
NON_SEMANTIC_KEYS = (
    "paths", "logger", "sweep", "rerun", "tuning",
    "trainer.device", "trainer.devices", "trainer.nodes", "trainer.dist_timeout_min", "trainer.num_workers", "trainer.progress", "trainer.log_every",
    "trainer.checkpoint_every", "task.eval_workers", "task.data_root",
)
# Cost fields the analysis computes with: a number, or null where the schema allows it.
NUMERIC_COST = (
    "params", "macs", "macs_ssm", "seq_len", "tau", "train_throughput", "eval_throughput", "peak_memory_mb",
    "wall_seconds", "steps", "resumed_from_step", "world_size",
)
# Factors every record carries, whether or not they were swept (its model family adds its own keys).
STANDARD_FACTORS = ("model.name", "task", "task.image_size", "seed")


def _drop(config: dict, dotted: str) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


def semantic_config(config: Mapping[str, Any]) -> dict:
    """The part of a resolved config that defines the cell (a deep copy)."""
    semantic = json.loads(json.dumps(config, default=str))
    for key in NON_SEMANTIC_KEYS:
        _drop(semantic, key)
    return semantic


def run_id(config: Mapping[str, Any]) -> str:
    """Content hash of the semantic config: stable across sweeps, machines and key order."""
    text = json.dumps(semantic_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def size_str(image_size: Iterable[int]) -> str:
    """"HxW"; any other length is joined the same way, so a malformed size still names its record."""
    return "x".join(str(side) for side in image_size)


def override_parts(item: str) -> tuple[str, str]:
    """(key, value) of one Hydra override as written: `+trainer.lr=1e-3` -> ("trainer.lr", "1e-3");
    the add/delete prefixes (+, ++, ~) are dropped, the value kept as text ("" for `~key`)."""
    key, _, value = item.lstrip("+~").partition("=")
    return key, value


def factors(config: Mapping[str, Any], overrides: Iterable[str], always: Iterable[str] = ()) -> dict[str, Any]:
    """Flat factor dict: the standard axes, the dotted keys `always` (the model family's record keys,
    e.g. model.ssm and model.scan), and every overridden key (values made scalar)."""
    out: dict[str, Any] = {
        "model.name": config["model"]["name"],
        "task": config["task"]["name"],
        "task.image_size": size_str(config["task"]["image_size"]),
        "seed": int(config["seed"]),
    }
    overrides = [f"{key}=" for key in always] + list(overrides)
    tuned = set((config.get("tuning") or {}).get("params") or ())  # chosen per arm by a tuning study
    for item in overrides:
        key, raw = override_parts(item)
        if key in out or key in tuned or key in ("model", "task", "experiment") or key.startswith("hydra") or _non_semantic(key):
            continue
        value = _lookup(config, key)
        if isinstance(value, Mapping):  # a config-group choice such as trainer=cpu: the option's name
            out[key] = raw
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


@dataclass(frozen=True)
class FamilyFacts:
    """A record's `family` block: the model family's name, record keys and switches' arm names."""

    name: str
    record_keys: tuple[str, ...] = ()
    switches: tuple[tuple[str, tuple[str, str]], ...] = ()  # (key, (name when false, name when true))

    def labels(self, key: str) -> tuple[str, str] | None:
        """The arm names of switch `key` (for false, true), or None when it is not a switch."""
        return dict(self.switches).get(key)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "record_keys": list(self.record_keys),
                "switches": {key: list(labels) for key, labels in self.switches}}

    @classmethod
    def from_json(cls, block: Mapping[str, Any]) -> "FamilyFacts":
        return cls(str(block["name"]), tuple(block.get("record_keys", ())),
                   tuple((key, (str(off), str(on))) for key, (off, on) in block.get("switches", {}).items()))


def new_record(config: dict, overrides: list[str], run_id: str, family: FamilyFacts | None = None,
               env: Mapping[str, Any] | None = None, curve: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A job's record before it has run: status failed (until the job says otherwise), every key present.

    family: the model family's facts (its record keys become factors, e.g. model.ssm); env and curve: the
    `env` block and the empty training curve's summary, from the stages that own them.
    """
    model_keys = [f"model.{key}" for key in family.record_keys] if family is not None else []
    return {
        "schema": SCHEMA, "run_id": run_id, "sweep": config["sweep"], "status": Status.FAILED, "error": None,
        "config": config, "overrides": list(overrides),
        "factors": factors(config, overrides, always=model_keys),
        "task": {"name": config["task"]["name"], "kind": None, "metric": None, "higher_is_better": True, "chance": None},
        "metrics": {},
        "data": {},
        "curve": dict(curve or {}),
        "cost": {"params": None, "macs": None, "macs_ssm": None, "input_size": list(config["task"]["image_size"]),
                 "seq_len": None, "tau": None, "train_throughput": None, "eval_throughput": None},
        "tuning": config.get("tuning"),
        "env": dict(env or {}),
        "family": family.to_json() if family is not None else None,
        "checkpoint_set_aside": None,
        "init": None,
    }


def _non_semantic(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS)


# Settings a model family gained after records of this schema were first written, with the behaviour
# every earlier record of that family had (the only one there was then). A record whose config lacks
# one is read as having that value (ablate.analysis.collect says how many were), never dropped.
ADDED_SETTINGS = {"mambaout": {"model.causal": False, "model.match_macs": False}}


def predated_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """{key: value} of the ADDED_SETTINGS this record's config predates (empty for a current record)."""
    model = (record.get("config") or {}).get("model") or {}
    family = (record.get("family") or {}).get("name")
    if family is None and "ssm" in model:  # written before records named their family: only MambaOut had ssm
        family = "mambaout"
    return {key: value for key, value in ADDED_SETTINGS.get(family, {}).items() if key.split(".", 1)[1] not in model}


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (``ablate.atomic.write``): never a torn file, never through a link."""
    atomic.write(Path(path), json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def validate(record: Mapping[str, Any]) -> list[str]:
    """Problems that make a record unusable by the analysis (empty list = valid)."""
    problems = []
    if record.get("schema") != SCHEMA:
        problems.append(f"schema={record.get('schema')!r}, expected {SCHEMA!r}")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if record.get("status") not in STATUSES:
        problems.append(f"status={record.get('status')!r}, expected one of {', '.join(STATUSES)}")
    for key in STANDARD_FACTORS:
        if key not in (record.get("factors") or {}):
            problems.append(f"factors lacks {key}")
    problems += _type_problems(record)
    task = record.get("task")
    if record.get("status") == Status.COMPLETED and isinstance(record.get("metrics"), Mapping) and isinstance(task, Mapping):
        metric = task.get("metric")
        if metric not in record["metrics"]:
            problems.append(f"completed record lacks its primary metric {metric!r}")
    return problems


def _type_problems(record: Mapping[str, Any]) -> list[str]:
    """Fields of the wrong type, each named (``metrics.top1='high' is a str, expected a number``).

    The analysis does arithmetic on metrics and costs: one string there would otherwise abort every
    report that reads the record, far from the file that caused it.
    """
    problems = []
    for key, kind in (("config", Mapping), ("factors", Mapping), ("task", Mapping), ("metrics", Mapping),
                      ("cost", Mapping), ("overrides", list)):
        if key in record and not isinstance(record[key], kind):
            problems.append(f"{key}={_short(record[key])} is a {type(record[key]).__name__}, expected a "
                            f"{'list' if kind is list else 'JSON object'}")
    numeric = []
    if isinstance(record.get("metrics"), Mapping):
        numeric += [("metrics", name) for name in record["metrics"]]
    if isinstance(record.get("cost"), Mapping):
        numeric += [("cost", name) for name in NUMERIC_COST if name in record["cost"]]
    for section, name in numeric:
        value = record[section][name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{section}.{name}={_short(value)} is a {type(value).__name__}, expected a number")
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read(path: Path) -> dict[str, Any]:
    """Load and validate one record; raise ValueError naming the file and the problem."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable record ({exc})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path}: record is not a JSON object")
    problems = validate(record)
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return record


def code_version() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the ablate package runs from: HEAD, and whether tracked
    files have uncommitted changes; (None, None) outside a git checkout."""
    import ablate

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(ablate.__file__).parent, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, (bool(status.strip()) if status is not None else None)


def staleness(env: Mapping[str, Any], commit: str | None) -> str | None:
    """Why a record's numbers may not be what the code at `commit` computes (None: no reason known):
    it was computed from a tree with uncommitted changes, or at another commit."""
    then = env.get("git_commit")
    if env.get("git_dirty") is True:
        return f"computed from a tree with uncommitted changes (at commit {str(then)[:12]})"
    if then and commit and then != commit:
        return f"computed at commit {then[:12]}, the code is now at {commit[:12]}"
    return None
