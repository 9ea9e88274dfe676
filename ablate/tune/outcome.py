"""What a finished job means to Optuna: COMPLETE with a value, PRUNED, or FAIL with a reason.

    job raised optuna.TrialPruned             -> PRUNED
    job raised anything else (JobStatus FAILED) -> FAIL, reason "Type: message"
    job returned a number                     -> COMPLETE (FAIL if not finite)
    job returned a result record (dict):
        status "completed"  -> COMPLETE with record["metrics"][record["task"]["metric"]]
        status "diverged" or "pruned" -> PRUNED
        status "failed"     -> FAIL, reason from record["error"]
    anything else                             -> FAIL, reason names what came back
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import optuna
from hydra.core.utils import JobReturn
from optuna.trial import TrialState

from ablate.records import Status

MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    value: float | None = None
    reason: str | None = None  # why a trial failed or was pruned
    status: str = Status.COMPLETED  # in the records' vocabulary: completed | failed | diverged | pruned
    run_id: str | None = None  # the record's run_id, linking the trial to results/runs/<run_id>
    higher_is_better: bool | None = None  # from the record, to check the study's direction


def outcome_of(job: JobReturn) -> Outcome:
    """Interpret one JobReturn; never raises for a failed job."""
    try:
        value = job.return_value
    except optuna.TrialPruned as exc:
        return Outcome(TrialState.PRUNED, reason=_short(f"pruned: {exc}"), status=Status.PRUNED)
    except Exception as exc:  # a failed trial must never kill the sweep
        return _fail(f"{type(exc).__name__}: {exc}")
    if isinstance(value, Mapping):
        return _from_record(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _from_number(float(value))
    return _fail(f"job returned {type(value).__name__}; expected a result record (dict) or a number")


def _from_number(value: float, **record_info: Any) -> Outcome:
    if not math.isfinite(value):
        return _fail(f"objective is {value}", **record_info)
    return Outcome(TrialState.COMPLETE, value=value, **record_info)


def _from_record(record: Mapping[str, Any]) -> Outcome:
    task = record.get("task") or {}
    info = {"run_id": record.get("run_id"), "higher_is_better": task.get("higher_is_better")}
    status = record.get("status")
    if status == Status.COMPLETED:
        metric = task.get("metric")
        metrics = record.get("metrics") or {}
        if metric not in metrics:
            return _fail(f"completed record lacks its primary metric {metric!r}", **info)
        value = metrics[metric]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return _fail(f"metric {metric!r} is {value!r}, not a number", **info)
        return _from_number(float(value), **info)
    if status in (Status.DIVERGED, Status.PRUNED):
        reason = _error_text(record.get("error")) or status
        return Outcome(TrialState.PRUNED, reason=_short(reason), status=status, **info)
    if status == Status.FAILED:
        return _fail(_error_text(record.get("error")) or "record status failed", **info)
    return _fail(f"record status {status!r}; expected completed, failed, diverged or pruned", **info)


def _error_text(error: Any) -> str | None:
    if isinstance(error, Mapping):
        return f"{error.get('type')}: {error.get('message')}"
    return None if error is None else str(error)


def _fail(reason: str, **record_info: Any) -> Outcome:
    return Outcome(TrialState.FAIL, reason=_short(reason), status=Status.FAILED, **record_info)


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
