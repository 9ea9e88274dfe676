"""The record's schema, `ablate.result/1`: typed blocks, their documentation, validation on read.

A job builds one `Record` from these blocks and writes `Record.to_json()`; the analysis reads the
JSON and checks it with `validate` (plain dicts: reading 100,000 records stays cheap). Each field's
documentation lives in its `metadata["doc"]`; docs/record.md's table and docs/record.schema.json are
generated from these classes (`python -m ablate.records`), and a test keeps them current.

A field with `metadata["since"]` was added to schema 1 after its first records were written: older
records lack it and are still valid (their readers treat it as absent). Every other field is in
every record.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Optional, Union

SCHEMA = "ablate.result/1"
TASK_KINDS = ("classification", "detection", "segmentation")  # TaskInfo.kind


class Status(str, Enum):
    """A record's `status`. A str: it compares equal to the text a record holds, and is written as it."""

    COMPLETED = "completed"
    FAILED = "failed"
    DIVERGED = "diverged"  # the training loss became non-finite
    PRUNED = "pruned"  # a tuning trial stopped early
    SKIPPED = "skipped"  # a downstream cell whose upstream cell did not complete (ablate.chain)

    __str__ = str.__str__  # f"{Status.FAILED}" is "failed"


STATUSES = tuple(s.value for s in Status)
Scalar = Union[bool, int, float, str, None]  # a factor's value


def doc(text: str, since: str | None = None, written: Any = None, beside: bool = False, **kwargs: Any) -> Any:
    """A dataclass field documented for docs/record.md; `since`: the block was added later (older records lack it).

    How a field is written when not as its type says, the one description validation, the JSON Schema
    and the docs read: `written`, the JSON type it is written as; `beside`, its items are written
    beside the block's other fields (a mapping of any further keys)."""
    metadata = {"doc": text, **({"since": since} if since else {}), **({"written": written} if written else {}),
                **({"beside": True} if beside else {})}
    return field(metadata=metadata, **kwargs)


class Block:
    """A record block: `to_json()` gives the dict written into result.json."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _json_value(value: Any) -> Any:
    if isinstance(value, Block):
        return value.to_json()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


@dataclass(frozen=True)
class TaskInfo(Block):
    """What the record and the analysis know about a task (a task declares it as `Task.info`)."""

    name: str = doc("the task's name (`task.name`)")
    kind: Optional[str] = doc("`classification` | `detection` | `segmentation`; null only in the record of a "
                              "job that failed before its task was built")
    metric: Optional[str] = doc("the primary metric, a key of `metrics` (null as for `kind`)")
    higher_is_better: bool = doc("whether a larger primary metric is better", default=True)
    # None where no guessing baseline exists (AP, mIoU): the analysis never lets an arm at chance decide a claim
    chance: Optional[float] = doc("the primary metric of a model that guesses (100 / classes for top-1; 0 for "
                                  "the occluded-line IoU); null where none exists (AP, mIoU)", default=None)


@dataclass(frozen=True)
class ErrorInfo(Block):
    type: str = doc("the exception's class name (`JobProcessDied` when the job's process died without a record)")
    message: str = doc("its first line, secrets redacted")
    traceback: str = doc("the last ~30 lines of its traceback, secrets redacted")


@dataclass(frozen=True)
class CurveSummary(Block):
    file: str = doc("`curve.json`, beside the record: {train: [[step, mean loss since the previous point, lr], "
                    "...], eval: [[step, {metric: value}], ...]}; kept in the checkpoint too, so a resumed run's "
                    "curve equals an uninterrupted one")
    points: int = doc("training-curve points")
    first_loss: Optional[float] = doc("the first point's loss (null: no point)")
    last_loss: Optional[float] = doc("the last point's loss; the report flags runs whose loss ended non-finite "
                                     "or no lower than it started")


@dataclass(frozen=True)
class Cost(Block):
    """Per image at the evaluated size unless said otherwise; null where the job did not get that far."""

    input_size: list[int] = doc("[H, W] evaluated")
    params: Optional[int] = doc("backbone parameters", default=None)
    macs: Optional[int] = doc("backbone multiply-accumulates per image", default=None)
    macs_ssm: Optional[int] = doc("of which in the selective scan", default=None)
    seq_len: Optional[int] = doc("L: tokens of the stride-16 stage-3 map as its convs round, ⌈H/16⌉ × ⌈W/16⌉; "
                                 "H1 takes L < τ, H2 L > τ, and a cell at exactly L = τ belongs to neither",
                                 default=None)
    tau: Optional[int] = doc("τ = 6 × the stage-3 width", default=None)
    train_throughput: Optional[float] = doc("training images per second, all ranks", default=None)
    eval_throughput: Optional[float] = doc("evaluation images per second (read with `task.eval_workers` "
                                           "loader processes, so it times the model rather than decoding)",
                                           default=None)
    peak_memory_mb: Optional[float] = doc("peak GPU memory allocated, or the process's peak RSS on CPU (MiB)",
                                          default=None)
    wall_seconds: Optional[float] = doc("the job's wall time, start to record", default=None)
    steps: Optional[int] = doc("optimizer steps trained", default=None)
    resumed_from_step: Optional[int] = doc("the checkpoint step this attempt resumed from (null: from step 0)",
                                           default=None)
    world_size: Optional[int] = doc("ranks: `trainer.devices` × `trainer.nodes`", default=None)
    extras: dict[str, Any] = doc("written into this block beside the fields above: the model family's cost facts "
                                 "(MambaOut: `expansion_ratio`, `hidden_widths`) and the task's (dense tasks: "
                                 "`detector_*` / `segmenter_*` for the whole network at `task.cost_size`)",
                                 beside=True, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {**out.pop("extras"), **out}

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "Cost":
        """The block from one flat dict, as the job collects it: the named fields, and the rest as extras."""
        named = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        return cls(**{k: v for k, v in flat.items() if k in named},
                   extras={k: v for k, v in flat.items() if k not in named})


NUMERIC_COST = tuple(f.name for f in dataclasses.fields(Cost) if f.name not in ("input_size", "extras"))


@dataclass(frozen=True)
class Tuning(Block):
    """The job's `tuning` settings as the tuner passes them (`+tuning.KEY=...`); any may be left out."""

    study: Optional[str] = doc("the Optuna study", default=None)
    trial: Optional[int] = doc("the trial this job ran (the final runs: the best trial)", default=None)
    storage: Optional[str] = doc("the study's storage URL, secrets redacted", default=None)
    role: Optional[str] = doc("`tune` (a trial) | `final` (the best trial's settings, once per seed)", default=None)
    params: Optional[list[str]] = doc("the tuned keys (left out of `factors`)", default=None)

    @classmethod
    def from_settings(cls, block: Mapping[str, Any]) -> "Tuning":
        """The block from the job's `tuning` settings: the keys it knows (any other stays in the record's config)."""
        named = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in block.items() if k in named})


@dataclass(frozen=True)
class Env(Block):
    ablate: str = doc("the package version")
    git_commit: Optional[str] = doc("HEAD of the checkout ablate ran from (null outside git)")
    git_dirty: Optional[bool] = doc("tracked files had uncommitted changes")
    torch: str = doc("torch version")
    timm: str = doc("timm version")
    python: str = doc("Python version")
    device: str = doc("the GPU's name, or `cpu (N cores, T threads)`")
    hostname: str = doc("the host rank 0 ran on")
    slurm_job_id: Optional[str] = doc("SLURM_JOB_ID, when under Slurm")
    scan_backend: str = doc("the selective scan that runs on CPU tensors: `cpp` | `torch`")
    started_at: str = doc("ISO-8601 UTC")
    finished_at: Optional[str] = doc("ISO-8601 UTC")


@dataclass(frozen=True)
class SetAside(Block):
    file: str = doc("where in `history/` the checkpoint was moved (kept, never deleted)")
    why: str = doc("why it could not be resumed from: unreadable, unsafe, lacking keys, another model's shapes, a "
                   "step outside the plan, another cell's")


@dataclass(frozen=True)
class Init(Block):
    upstream_run_id: Optional[str] = doc("the cell whose final checkpoint the backbone started from "
                                         "(`task.backbone_from`); null for a user's file (`task.backbone_ckpt`)")
    checkpoint: Optional[str] = doc("that file (null in a skipped cell's record)", default=None)
    sha256: Optional[str] = doc("of that file (null in a skipped cell's record)", default=None)


@dataclass(frozen=True)
class FamilyFacts(Block):
    """A record's `family` block: the model family's name, record keys and switches' arm names."""

    name: str = doc("the model family (`mambaout`, `deit`)")
    record_keys: tuple[str, ...] = doc("model keys every record of the family carries in `factors` "
                                       "(MambaOut: `ssm`, `scan`, `causal`, `match_macs`)", default=())
    # (key, (name when false, name when true)); written as {key: [off, on]}
    switches: tuple[tuple[str, tuple[str, str]], ...] = doc(
        "{key: [arm name when false, when true]} (MambaOut: `ssm` is `no SSM` / `SSM`)", written=dict[str, list[str]],
        default=())

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


@dataclass(frozen=True)
class Record(Block):
    """One cell's result: `results/runs/<run_id>/result.json`."""

    schema: str = doc(f"`{SCHEMA}`", default=SCHEMA, init=False)
    run_id: str = doc("16 hex chars: sha256 of the resolved config minus the keys that never name a cell "
                      "(`ablate.records.NON_SEMANTIC_KEYS`): the same cell gets the same id on any machine")
    sweep: str = doc("the sweep the job ran under (a cell may be shared by several sweeps)")
    status: Status = doc("`completed` | `failed` | `diverged` (non-finite loss) | `pruned` (a tuning trial "
                         "stopped early) | `skipped` (`task.backbone_from`: its upstream cell did not complete; "
                         "never trained from scratch)")
    error: Optional[ErrorInfo] = doc("why the cell did not complete (null when it did)")
    config: dict[str, Any] = doc("the resolved job config, with the effective `trainer.lr` and the keys the model "
                                 "does not use at their defaults (`model.scan`, `d_state`, `dt_rank` while "
                                 "`model.ssm=false` and `model.match_macs=false`)")
    overrides: list[str] = doc("the job's Hydra overrides")
    factors: dict[str, Scalar] = doc("flat: `model.name`, `task`, `task.image_size` (`HxW`), `seed`, the model "
                                     "family's record keys (`family.record_keys`), and every other overridden key "
                                     "(tuned keys excluded)")
    task: TaskInfo = doc("the task's facts")
    metrics: dict[str, float] = doc("every final evaluation metric ({} when the job failed before evaluating)")
    cost: Cost = doc("what the cell cost and the size facts the hypotheses scope on")
    tuning: Optional[Tuning] = doc("the tuning study the job ran for (null otherwise)")
    env: Env = doc("where and with what the job ran")
    data: dict[str, float] = doc("the task's `data_summary()` after training: classification gives "
                                 "`train_images`, `val_images` and `corrupt_train_images` (distinct undecodable "
                                 "training files, each replaced by the next file, counted since the process "
                                 "started); {} for other tasks and before training", since="data",
                                 default_factory=dict)
    curve: Optional[CurveSummary] = doc("where the training curve is and how the loss moved", since="curve",
                                        default=None)
    family: Optional[FamilyFacts] = doc("what the report needs of the model family, so that the analysis never "
                                        "imports the models; null for an unknown variant; a record without it "
                                        "names its arms `key=level`", since="family", default=None)
    checkpoint_set_aside: Optional[SetAside] = doc("a checkpoint this attempt could not resume from, moved to "
                                                   "`history/` before the cell trained from step 0",
                                                   since="checkpoint_set_aside", default=None)
    init: Optional[Init] = doc("where the backbone's weights came from (null: the model's own "
                               "initialisation); a skipped cell has the upstream run id alone", since="init",
                               default=None)


RECORD_KEYS = tuple(f.name for f in dataclasses.fields(Record) if "since" not in f.metadata)


# -- validation on read --------------------------------------------------------------------------------
Check = Callable[[Any], bool]  # is this JSON value of the type?


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns={**globals(), "Scalar": Scalar})


def _what(tp: Any) -> str:
    """A type as the docs and the problem lines name it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_what(a) for a in args) if tp is not Scalar else "scalar"
    if origin in (list, tuple):
        return f"[{_what(args[0])}]"
    if origin is dict:
        return f"{{str: {_what(args[1])}}}"
    if dataclasses.is_dataclass(tp):
        return "object"
    return {str: "str", int: "int", float: "number", bool: "bool", type(None): "null", Any: "any",
            Status: "str"}.get(tp, getattr(tp, "__name__", str(tp)))


def _expected(tp: Any) -> str:
    """What a value of type `tp` is, as a problem line says it: "a number (integer) or null"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Scalar:
        return "a scalar (bool, number, string or null)"
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a JSON object"
    return {float: "a number", int: "a number (integer)", bool: "true or false", str: "a string"}[tp]


def _written(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, the JSON type it is written as) of each block field, in order (a `beside` field included)."""
    return [(f, f.metadata.get("written", hint)) for f, hint in zip(dataclasses.fields(cls), _hints(cls).values())]


def _fields(cls: type) -> list[tuple[str, Any]]:
    """(name, type) of a block's keys as written into JSON (a `beside` field's items are any further keys)."""
    return [(f.name, hint) for f, hint in _written(cls) if "beside" not in f.metadata]


def _leaf(tp: Any) -> frozenset | None:
    """The Python types a JSON value of type `tp` may have, when `tp` is a leaf (a scalar, maybe null); else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Scalar:
        return frozenset((bool, int, float, str, type(None)))
    if origin in (Union, types.UnionType):
        parts = [_leaf(a) for a in args]
        return frozenset().union(*parts) if all(part is not None for part in parts) else None
    # a bool is not an int here; a float may be written as an int
    return {float: frozenset((int, float)), int: frozenset((int,)), bool: frozenset((bool,)),
            str: frozenset((str,)), type(None): frozenset((type(None),))}.get(tp)


def _is(tp: Any) -> Check:
    """A fast predicate: is this JSON value of type `tp`? (Reading 100,000 records calls it millions of
    times: leaves are checked by type sets, containers of leaves by one set of their values' types.)"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    leaf = _leaf(tp)
    if leaf is not None:
        return lambda value: type(value) in leaf
    if tp is Any:
        return lambda value: True
    if tp is Status:
        return lambda value: value in STATUSES
    if origin in (Union, types.UnionType):
        if len(args) == 2 and type(None) in args:
            some = _is(next(a for a in args if a is not type(None)))
            return lambda value: value is None or some(value)
        options = [_is(a) for a in args]
        return lambda value: any(ok(value) for ok in options)
    if dataclasses.is_dataclass(tp):
        return _block_check([(name, _leaf(hint), _is(hint)) for name, hint in _fields(tp)])
    if origin is dict:
        if args[1] is Any:
            return lambda value: isinstance(value, dict)
        items = _leaf(args[1])
        if items is not None:
            return lambda value: isinstance(value, dict) and set(map(type, value.values())) <= items
        item = _is(args[1])
        return lambda value: isinstance(value, dict) and all(item(v) for v in value.values())
    if origin in (list, tuple):
        items = _leaf(args[0])
        if items is not None:
            return lambda value: type(value) is list and set(map(type, value)) <= items
        item = _is(args[0])
        return lambda value: type(value) is list and all(item(v) for v in value)
    raise TypeError(f"no JSON check for {tp!r}")


def _block_check(fields: list[tuple[str, frozenset | None, Check]]) -> Check:
    leaves = [(name, leaf) for name, leaf, _ in fields if leaf is not None]
    others = [(name, ok) for name, leaf, ok in fields if leaf is None]

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        for name, leaf in leaves:
            if name in value and type(value[name]) not in leaf:
                return False
        for name, ok in others:
            if name in value and not ok(value[name]):
                return False
        return True
    return check


def _explain(tp: Any, value: Any, key: str) -> list[str]:
    """The problems of a value `_is(tp)` refused, each naming its dotted key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Status:
        return [f"{key}={value!r}, expected one of {', '.join(STATUSES)}"]
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args and isinstance(value, (dict, list)):
        return _explain(next(a for a in args if a is not type(None)), value, key)  # a block: say what is wrong inside
    wrong = [f"{key}={_short(value)} is a {_json_name(value)}, expected {_expected(tp)}"]
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return [p for name, hint in _fields(tp) if name in value and not _is(hint)(value[name])
                for p in _explain(hint, value[name], f"{key}.{name}")]
    if origin is dict and isinstance(value, dict):
        return [p for name, v in value.items() if not _is(args[1])(v) for p in _explain(args[1], v, f"{key}.{name}")]
    if origin in (list, tuple) and type(value) is list:
        return [p for i, v in enumerate(value) if not _is(args[0])(v) for p in _explain(args[0], v, f"{key}[{i}]")]
    return wrong


def _json_name(value: Any) -> str:
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_RECORD_CHECKS = [(name, hint, _is(hint)) for name, hint in _fields(Record) if name != "schema"]
STANDARD_FACTORS = ("model.name", "task", "task.image_size", "seed")  # in every record's factors


def validate(record: Mapping[str, Any]) -> list[str]:
    """Problems that make a record unusable by the analysis, each naming its key (empty list = valid)."""
    problems = []
    if record.get("schema") != SCHEMA:
        problems.append(f"schema={record.get('schema')!r}, expected {SCHEMA!r}")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    for key, hint, ok in _RECORD_CHECKS:
        if key in record and not ok(record[key]):
            problems += _explain(hint, record[key], key)
    factors = record.get("factors")
    if isinstance(factors, Mapping):
        problems += [f"factors lacks {key}" for key in STANDARD_FACTORS if key not in factors]
    task, metrics = record.get("task"), record.get("metrics")
    if record.get("status") == Status.COMPLETED and isinstance(metrics, Mapping) and isinstance(task, Mapping):
        if task.get("metric") not in metrics:
            problems.append(f"completed record lacks its primary metric {task.get('metric')!r}")
    return problems


# -- generated documentation -----------------------------------------------------------------------------
def _json_schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return {}
    if tp is Status:
        return {"enum": list(STATUSES)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_json_schema_of(a, defs) for a in args]}
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder: a block is defined once
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if origin is dict:
        return {"type": "object", "additionalProperties": _json_schema_of(args[1], defs)}
    if origin in (list, tuple):
        return {"type": "array", "items": _json_schema_of(args[0], defs)}
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}[tp]}


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    properties, required, beside = {}, [], None
    for f, hint in _written(cls):
        if "beside" in f.metadata:
            beside = f
            continue
        properties[f.name] = {**_json_schema_of(hint, defs), "description": f.metadata["doc"]}
        if cls is Record and "since" not in f.metadata:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out["description"] = " ".join(cls.__doc__.split())
    if required:
        out["required"] = required
    if cls is Record:
        out["properties"]["schema"]["const"] = SCHEMA
    if beside is not None:
        out["additionalProperties"] = {"description": " ".join(beside.metadata["doc"].split())}
    return out


def json_schema() -> dict[str, Any]:
    """The record's JSON Schema (draft 2020-12), generated from these classes."""
    defs: dict[str, Any] = {}
    root = _object_schema(Record, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA,
            "title": "ablate result record", **root, "$defs": defs}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def schema_table() -> str:
    """docs/record.md's table: every key of the record and of its blocks, with its type and meaning."""
    rows = ["| key | type | content |", "|---|---|---|"]

    def add(cls: type, prefix: str) -> None:
        for f, hint in _written(cls):
            key = f"{prefix}…" if "beside" in f.metadata else f"{prefix}{f.name}"
            since = "; absent in records written before it existed" if "since" in f.metadata else ""
            rows.append(f"| `{key}` | {_cell(_what(hint))} | {_cell(f.metadata['doc'] + since)} |")
            block = next((a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)), None)
            if block is not None:
                add(block, f"{key}.")
    add(Record, "")
    return "\n".join(rows) + "\n"
