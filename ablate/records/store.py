"""Where records live and how they are written: the one owner of a cell folder's bookkeeping.

    results/runs/<run_id>/result.json       the record of one cell (content-addressed, shared by sweeps)
    results/runs/<run_id>/checkpoint.pt     its latest (finally its last) training state
    results/runs/<run_id>/history/          earlier attempts' records and curves (and checkpoints)
    results/sweeps/<sweep>/<job>/cell.json  {"run_id", "run_dir", "overrides"}: which cells a sweep has

A record is written once per attempt, atomically (never a torn file, never through a link), while
the job holds the cell's fcntl lock, so two jobs of one cell never run at once. A read-only cell
folder can still hand out its completed record (nobody can write it, so reading needs no lock).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from ablate import atomic
from ablate.records.schema import Record, validate

RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"
CURVE_FILE = "curve.json"  # the training curve, beside the record (its summary is the record's `curve`)
POINTER_FILE = "cell.json"  # in a sweep's job folder

log = logging.getLogger("ablate.records")


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (``ablate.atomic.write``): never a torn file, never through a link."""
    atomic.write(Path(path), json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read(path: Path | str) -> dict[str, Any]:
    """Load and validate one record; raise ValueError naming the file, the key and what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.loads(handle.read())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable record ({exc})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path}: record is not a JSON object")
    problems = validate(record)
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return record


def read_only(error: OSError) -> bool:
    """Whether an error writing a folder means nobody may write it (not a full disk or a bug)."""
    return error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


class CellStore:
    """One cell's folder, results/runs/<run_id>/."""

    def __init__(self, results: Path, run_id: str):
        self.run_id = run_id
        self.dir = Path(results) / "runs" / run_id

    def make(self) -> None:
        """Create the folder; an OSError (a read-only or full results folder) is the caller's to report."""
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Optional[OSError]]:
        """Hold the cell's lock; yield None, or the error that makes the folder read-only (then unlocked)."""
        try:
            handle = open(self.dir / ".lock", "w")
        except OSError as exc:
            if not read_only(exc):
                raise
            yield exc
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("cell %s is running in another job; waiting for it", self.run_id)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield None

    def previous(self) -> Optional[dict[str, Any]]:
        """The record an earlier attempt left (validated), or None; an unusable one is warned of and ignored."""
        path = self.dir / RESULT_FILE
        try:
            return read(path) if path.exists() else None
        except ValueError as exc:
            log.warning("ignoring unreadable previous record: %s", exc)
            return None

    def archive(self, previous: Mapping[str, Any], fresh_start: bool) -> None:
        """Keep the earlier attempt's record and curve (and, for a fresh start, its checkpoint) under history/."""
        history = self.dir / "history"
        history.mkdir(exist_ok=True)
        stamp = (previous.get("env", {}).get("finished_at") or now()).replace(":", "-")
        shutil.move(str(self.dir / RESULT_FILE), history / f"result-{stamp}.json")
        if (self.dir / CURVE_FILE).exists():  # the attempt's curve goes with its record (a resume rewrites it)
            shutil.move(str(self.dir / CURVE_FILE), history / f"curve-{stamp}.json")
        if fresh_start and (self.dir / CHECKPOINT_FILE).exists():
            shutil.move(str(self.dir / CHECKPOINT_FILE), history / f"checkpoint-{stamp}.pt")

    def write(self, record: Record) -> dict[str, Any]:
        """Write this attempt's record (atomically; OSError, e.g. ENOSPC, to the caller); return its JSON."""
        payload = record.to_json()
        write_json_atomic(self.dir / RESULT_FILE, payload)
        return payload

    def point_from(self, job_dir: Path, overrides: list[str]) -> None:
        """A sweep's job folder names this cell (cell.json); a read-only job folder is warned of, not fatal."""
        try:
            write_json_atomic(job_dir / POINTER_FILE, {"run_id": self.run_id, "run_dir": str(self.dir),
                                                       "overrides": overrides})
        except OSError as exc:
            if not read_only(exc):
                raise
            log.warning("no cell pointer for %s (the report will not list this job): %s", self.run_id, exc)


def now() -> str:
    """The time in the record's format: ISO-8601 UTC, seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
