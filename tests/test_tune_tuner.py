"""The tuning loop with a fake launcher: identical proposals, launcher errors, wrong direction."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from ablate.tune import study as st
from ablate.tune.errors import TuneConfigError
from ablate.tune.space import parse_plan
from ablate.tune.storage import load_study
from ablate.tune.tuner import FairTuner, TuneSettings

optuna.logging.set_verbosity(optuna.logging.WARNING)
RANDOM = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}


class FakeLauncher:
    """Records every batch; each job returns `result(overrides)`."""

    def __init__(self, result=lambda overrides: 1.0) -> None:
        self.batches: list[tuple[list[list[str]], int]] = []
        self.result = result

    def __call__(self, batch: list[list[str]], first_job: int) -> list[JobReturn]:
        self.batches.append((batch, first_job))
        returns = []
        for overrides in batch:
            job = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
            job.return_value = self.result(overrides)
            returns.append(job)
        return returns


def tuner(tmp_path: Path, *arguments: str, **settings) -> FairTuner:
    plan = parse_plan(None, list(arguments), None, OverridesParser.create())
    options = dict(n_trials=4, n_jobs=1, sampler=RANDOM, pruner=None)
    options.update(settings)
    return FairTuner(plan, TuneSettings(**options), f"journal://{tmp_path}/o.log", "s",
                     tmp_path / "sweep")


def trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return load_study(f"journal://{tmp_path}/o.log", "s").trials


def test_a_repeated_proposal_is_told_the_earlier_value_without_a_job(tmp_path: Path) -> None:
    launch = FakeLauncher(lambda overrides: 0.7)
    tuner(tmp_path, "opt=choice(adam)").run(launch)  # a one-point space: every proposal repeats
    assert len(launch.batches) == 1
    assert [t.state for t in trials(tmp_path)] == [TrialState.COMPLETE] * 4
    assert [t.value for t in trials(tmp_path)] == [0.7] * 4
    assert [t.user_attrs.get(st.DUPLICATE_OF) for t in trials(tmp_path)] == [None, 0, 0, 0]


def test_identical_proposals_in_one_batch_share_one_job(tmp_path: Path) -> None:
    launch = FakeLauncher()
    tuner(tmp_path, "opt=choice(adam)", n_trials=3, n_jobs=3).run(launch)
    [(batch, first)] = launch.batches
    assert len(batch) == 1 and first == 0
    assert "+tuning.trial=0" in batch[0] and "opt=adam" in batch[0]
    assert [t.user_attrs.get(st.DUPLICATE_OF) for t in trials(tmp_path)] == [None, 0, 0]


def test_a_launcher_error_gives_the_parameters_back_and_stops_the_sweep(tmp_path: Path) -> None:
    def broken(batch, first_job):
        raise OSError("sbatch: command not found")

    with pytest.raises(OSError, match="sbatch"):
        tuner(tmp_path, "x=interval(0, 1)", n_jobs=2).run(broken)
    failed, _, waiting, _ = trials(tmp_path)
    assert failed.state == TrialState.FAIL
    assert "OSError: sbatch: command not found" in failed.user_attrs[st.NOT_RUN]
    assert waiting.state == TrialState.WAITING

    launch = FakeLauncher()
    tuner(tmp_path, "x=interval(0, 1)", n_jobs=2).run(launch)  # the retry: budget intact
    counted = [t for t in trials(tmp_path) if st.NOT_RUN not in t.user_attrs]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * 4
    assert counted[0].user_attrs[st.RETRY_OF] == 0 and counted[0].params == failed.params


def test_a_metric_whose_direction_disagrees_stops_with_one_line(tmp_path: Path) -> None:
    record = {"status": "completed", "run_id": "r", "metrics": {"loss": 0.3}, "error": None,
              "task": {"metric": "loss", "higher_is_better": False}}
    with pytest.raises(TuneConfigError, match="direction=maximize: the jobs' primary metric is "
                       "lower-is-better; use hydra.sweeper.direction=minimize"):
        tuner(tmp_path, "x=interval(0, 1)").run(FakeLauncher(lambda overrides: record))
    assert trials(tmp_path)[0].state == TrialState.FAIL


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"direction": "up"}, "hydra.sweeper.direction='up': expected maximize or minimize"),
        ({"n_trials": 0}, "hydra.sweeper.n_trials=0: expected an integer >= 1"),
        ({"final_seeds": ("a",)}, "final_seeds=\\['a'\\]: expected a list of integers"),
    ],
)
def test_bad_settings_are_one_clear_line(settings: dict, message: str) -> None:
    with pytest.raises(TuneConfigError, match=message):
        TuneSettings(**settings)
