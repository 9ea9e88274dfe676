"""A finished job -> what Optuna is told (ablate.tune.outcome)."""
from __future__ import annotations

import math

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from ablate.tune.outcome import outcome_of


def returned(value) -> JobReturn:
    job = JobReturn(status=JobStatus.COMPLETED)
    job.return_value = value
    return job


def raised(exc: BaseException) -> JobReturn:
    job = JobReturn(status=JobStatus.FAILED, overrides=["x=1"])
    job.return_value = exc
    return job


def record(status: str, metrics=None, error=None, higher_is_better=True) -> dict:
    return {"status": status, "run_id": "abc", "metrics": metrics or {}, "error": error,
            "task": {"metric": "acc", "higher_is_better": higher_is_better}}


def test_numbers_and_completed_records_complete() -> None:
    assert outcome_of(returned(3)).value == 3.0
    done = outcome_of(returned(record("completed", {"acc": 0.9, "loss": 0.1})))
    assert (done.state, done.value, done.run_id, done.higher_is_better) == (
        TrialState.COMPLETE, 0.9, "abc", True)


@pytest.mark.parametrize(
    "job, reason",
    [
        (raised(RuntimeError("CUDA out of memory")), "RuntimeError: CUDA out of memory"),
        (returned(record("failed", error={"type": "DataError", "message": "no data"})),
         "DataError: no data"),
        (returned(record("completed", {"loss": 0.1})), "lacks its primary metric 'acc'"),
        (returned(record("completed", {"acc": None})), "metric 'acc' is None, not a number"),
        (returned(record("queued")), "record status 'queued'"),
        (returned(math.nan), "objective is nan"),
        (returned(True), "job returned bool"),
        (returned(None), "job returned NoneType"),
    ],
)
def test_failures_become_fail_with_a_reason(job: JobReturn, reason: str) -> None:
    outcome = outcome_of(job)
    assert outcome.state == TrialState.FAIL and outcome.status == "failed"
    assert reason in outcome.reason


@pytest.mark.parametrize(
    "job, status",
    [
        (returned(record("diverged", error={"type": "Diverged", "message": "loss is nan"})),
         "diverged"),
        (returned(record("pruned")), "pruned"),
        (raised(optuna.TrialPruned("pruned at step 2")), "pruned"),
    ],
)
def test_diverged_and_pruned_become_pruned(job: JobReturn, status: str) -> None:
    outcome = outcome_of(job)
    assert (outcome.state, outcome.status, outcome.value) == (TrialState.PRUNED, status, None)
