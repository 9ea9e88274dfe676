"""Pretrain, then fine-tune: which cell a dense cell's backbone starts from (`task.backbone_from`).

A dense cell with `task.backbone_from=T` (the downstream cell) starts its backbone from the final
checkpoint of its upstream cell: the cell of task T with the same model settings (arm, variant and
every other `model.*` key) and the same seed. The upstream cell is looked up among the records
under `paths.results`, this sweep's cells first, so an ImageNet cell trained in an earlier sweep is
reused, never retrained.

One rule serves the three stages that need it:

* the launchers (`dependencies`): run an upstream cell before the cells that need it (the local pool
  waits on it; Slurm submits the downstream job with `--dependency=afterok:<id>`; the grid sweeper
  puts the jobs that set task.backbone_from last, for Hydra's basic launcher, which runs jobs in order);
* the job (`find_upstream`): the upstream's checkpoint and its sha256 for the record's `init`; a
  downstream cell whose upstream did not complete is recorded as `skipped`, never trained from scratch;
* `ablate plan`: the upstream cell of each downstream cell.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ablate import records

UPSTREAM_KEY = "backbone_from"  # task.<key>: the upstream task's name


class UpstreamError(ValueError):
    """No usable upstream cell (none, several, or only one of other model settings): one line that
    says what is missing or what differs."""


class UpstreamNotCompleted(RuntimeError):
    """The upstream cell failed (or diverged, or was pruned): the downstream cell is skipped."""

    def __init__(self, upstream: "Upstream"):
        super().__init__(upstream.why_not())
        # the skipped record's `init`: which cell it waited for
        self.init = records.Init(upstream.run_id)


@dataclass(frozen=True)
class Link:
    """What identifies a cell for chaining: its task, seed and model settings (inert keys at their
    defaults, as in the cell's record)."""

    task: str
    seed: int
    model: str  # the model settings as canonical JSON

    @classmethod
    def of(cls, task: str, seed: Any, model: Mapping[str, Any]) -> "Link":
        return cls(str(task), int(seed), json.dumps(dict(model), sort_keys=True, default=str))


def upstream_task(config: Mapping[str, Any]) -> Optional[str]:
    """The task a cell's backbone starts from (`task.backbone_from`), or None."""
    task = config.get("task") or {}
    return task.get(UPSTREAM_KEY) or None


def own_link(config: Mapping[str, Any]) -> Link:
    """The Link of the cell a resolved config (ablate.cell.resolve's, or a record's `config`) defines."""
    return Link.of(config["task"]["name"], config["seed"], config["model"])


def wanted_link(config: Mapping[str, Any]) -> Optional[Link]:
    """The Link of the upstream cell a resolved config needs, or None for a cell that starts afresh."""
    wanted = upstream_task(config)
    return None if wanted is None else Link.of(wanted, config["seed"], config["model"])


def dependencies(configs: Sequence[Optional[Mapping[str, Any]]]) -> list[list[int]]:
    """For each job of a sweep (its resolved config; None for a job that is not a cell), the indices of
    the jobs it waits for: those that are its upstream cell."""
    by_link: dict[Link, list[int]] = {}
    for index, config in enumerate(configs):
        if config is not None:
            by_link.setdefault(own_link(config), []).append(index)
    return [by_link.get(link, []) if config is not None and (link := wanted_link(config)) is not None else []
            for config in configs]


@dataclass(frozen=True)
class Upstream:
    """The upstream cell of a downstream cell, as its record says."""

    run_id: str
    run_dir: Path
    record: Mapping[str, Any]

    @property
    def completed(self) -> bool:
        return self.record.get("status") == records.Status.COMPLETED

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / records.CHECKPOINT_FILE

    def why_not(self) -> str:
        """Why this upstream cannot feed its downstream cell (for a skipped record)."""
        error = self.record.get("error") or {}
        detail = f": {error.get('type')}: {error.get('message')}" if error else ""
        return f"upstream cell {self.run_id} ({self.record['config']['task']['name']}) is {self.record.get('status')}{detail}"


def find_upstream(config: Mapping[str, Any], results: Path, sweep_dir: Optional[Path] = None) -> Upstream:
    """The upstream cell of the downstream cell whose resolved config is `config`.

    Looks among this sweep's cells first (`sweep_dir`/*/cell.json), then among every record under
    `results`/runs. A completed cell wins over failed ones; several completed ones (the same task
    trained with two recipes) are ambiguous and refused, as is finding only cells of other model
    settings (the message names the keys that differ). The returned cell may be failed: the caller
    records the downstream cell as skipped.
    """
    wanted = wanted_link(config)
    assert wanted is not None, "find_upstream needs a config with task.backbone_from"
    runs = Path(results) / "runs"
    in_sweep = _sweep_run_ids(sweep_dir) if sweep_dir is not None else None
    candidates = _records(runs, in_sweep)
    everything = candidates if in_sweep is None else []  # every record, read at most once
    found = [cell for cell in candidates if own_link(cell.record["config"]) == wanted]
    if not found and in_sweep is not None:
        everything = _records(runs, None)
        found = [cell for cell in everything if own_link(cell.record["config"]) == wanted]
    done = [cell for cell in found if cell.completed]
    if len(done) == 1:
        return done[0]
    if len(done) > 1:
        ids = ", ".join(sorted(cell.run_id for cell in done))
        raise UpstreamError(f"task.{UPSTREAM_KEY}={wanted.task}: {len(done)} completed {wanted.task} cells of these "
                            f"model settings and seed {wanted.seed} under {runs} ({ids}), trained with different "
                            f"recipes; name the one to start from with task.backbone_ckpt=<run dir>/{records.CHECKPOINT_FILE}")
    if found:
        return sorted(found, key=lambda cell: cell.record.get("env", {}).get("finished_at") or "")[-1]
    raise UpstreamError(_nothing_found(wanted, config["model"], runs, everything))


def _nothing_found(wanted: Link, model: Mapping[str, Any], runs: Path, cells: Sequence[Upstream]) -> str:
    """The one line for a downstream cell without an upstream among `cells` (every record under `runs`):
    what differs in the nearest candidate."""
    same_task = [cell.record["config"] for cell in cells if cell.record["config"]["task"]["name"] == wanted.task]
    where = f"task.{UPSTREAM_KEY}={wanted.task}: no {wanted.task} cell"
    if not same_task:
        return (f"{where} under {runs}; run it first (put its grid in the same sweep, before this one) "
                f"or give task.backbone_ckpt=PATH")
    def differences(other: Mapping[str, Any]) -> list[str]:
        keys = sorted(set(model) | set(other["model"]))
        out = [f"model.{k} ({_text(other['model'].get(k))} there, {_text(model.get(k))} here)"
               for k in keys if other["model"].get(k) != model.get(k)]
        if int(other["seed"]) != wanted.seed:
            out.append(f"seed ({other['seed']} there, {wanted.seed} here)")
        return out
    nearest = min((differences(other) for other in same_task), key=len)
    return (f"{where} of these model settings and seed under {runs}: the nearest differs in {', '.join(nearest)}; "
            f"a backbone starts only from the same arm, variant and seed")


def _text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _records(runs: Path, run_ids: Optional[Iterable[str]]) -> list[Upstream]:
    """The readable records under `runs` (only `run_ids` when given), as Upstream candidates."""
    folders = [runs / run_id for run_id in run_ids] if run_ids is not None else (
        sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else [])
    out = []
    for folder in folders:
        path = folder / records.RESULT_FILE
        if not path.is_file():
            continue
        try:
            record = records.read(path)
        except ValueError:  # an unreadable record is nobody's upstream; the report names it
            continue
        out.append(Upstream(folder.name, folder, record))
    return out


def _sweep_run_ids(sweep_dir: Path) -> list[str]:
    """The run ids of the cells a sweep folder points to (its jobs' cell.json)."""
    ids = []
    for pointer in sorted(Path(sweep_dir).glob("*/cell.json")):
        try:
            ids.append(json.loads(pointer.read_text())["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(set(ids))


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
