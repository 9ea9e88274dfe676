"""The pruning hook a training job gets from its config (ablate.tune.pruning)."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from ablate.tune import study as st
from ablate.tune.errors import TuneConfigError
from ablate.tune.pruning import reporter_from_config
from ablate.tune.storage import open_storage

SPACE = {"x": FloatDistribution(0.0, 1.0)}
THRESHOLD = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5}
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def trial_cfg(tmp_path: Path):
    """A study with a ThresholdPruner(lower=0.5), one RUNNING trial, and a job config for it."""
    url = f"journal://{tmp_path}/o.log"
    study = st.open_study(open_storage(url), "s", direction="maximize", space=SPACE, n_trials=3,
                          sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0},
                          pruner=THRESHOLD, arm=None)
    trial = study.ask(SPACE)
    cfg = OmegaConf.create({"seed": 0, "tuning": {"study": "s", "trial": trial.number,
                                                  "storage": url, "role": "tune"}})
    return study, trial, cfg


def test_reports_reach_the_trial_and_a_bad_value_prunes(trial_cfg) -> None:
    study, trial, cfg = trial_cfg
    report = reporter_from_config(cfg, metric="acc")
    report(0, {"acc": 0.8, "loss": 1.0})
    with pytest.raises(optuna.TrialPruned, match="pruned at step 1: acc=0.3"):
        report(1, {"acc": 0.3})
    assert study.get_trials()[trial.number].intermediate_values == {0: 0.8, 1: 0.3}


def test_missing_metric_is_named(trial_cfg) -> None:
    _, _, cfg = trial_cfg
    report = reporter_from_config(cfg, metric="acc")
    with pytest.raises(KeyError, match="metric 'acc' not in evaluation metrics"):
        report(0, {"loss": 1.0})


def test_a_trial_finished_elsewhere_stops_reporting_without_failing_the_job(trial_cfg) -> None:
    study, trial, cfg = trial_cfg
    report = reporter_from_config(cfg, metric="acc")
    st.mark_not_run(study, trial.number, "interrupted")
    report(0, {"acc": 0.1})  # would prune if the trial were still running
    assert study.get_trials()[trial.number].intermediate_values == {}


def test_no_reporter_outside_tuning_or_for_final_runs(trial_cfg) -> None:
    _, _, cfg = trial_cfg
    assert reporter_from_config(OmegaConf.create({"seed": 0}), metric="acc") is None
    cfg.tuning.role = "final"
    assert reporter_from_config(cfg, metric="acc") is None


@pytest.mark.parametrize(
    "tuning, metric, message",
    [
        ({"study": "s", "trial": 0, "storage": "x://", "role": "best"}, "acc",
         "tuning.role='best': expected one of tune, final"),
        ({"study": "s", "role": "tune"}, "acc", "missing: trial, storage"),
        ({"study": "s", "trial": 0, "storage": "journal:///x.log"}, None, "no metric to report"),
    ],
)
def test_incomplete_tuning_config_is_one_clear_line(tuning: dict, metric, message: str) -> None:
    with pytest.raises(TuneConfigError, match=message):
        reporter_from_config(OmegaConf.create({"tuning": tuning}), metric=metric)


def test_metric_can_come_from_the_config(trial_cfg) -> None:
    study, trial, cfg = trial_cfg
    cfg.tuning.metric = "acc"
    reporter_from_config(cfg)(0, {"acc": 0.9})
    assert study.get_trials()[trial.number].state == TrialState.RUNNING
    assert study.get_trials()[trial.number].intermediate_values == {0: 0.9}
