"""The pruning hook: a training job reports its validation metric to its Optuna trial.

The sweeper hands each trial job its handle as config overrides (`tuning` is excluded from the
run_id hash, see ablate/records/identity.py):

    +tuning.study=<study name> +tuning.trial=<trial number> +tuning.storage=<url, env:NAME or file:PATH> +tuning.role=tune

The runner builds `on_eval` for `ablate.train.fit` from it:

    report = reporter_from_config(cfg, metric=task.info.metric)   # None outside tuning
    fit(..., on_eval=report)

Each call reports `metrics[metric]` at `step` and raises `TrialPruned` when the study's pruner
(rebuilt from the study's `ablate.pruner` attr) says so: both the training loop's `Pruned`, which the
runner records as status "pruned", and `optuna.TrialPruned`, which Optuna's own callers expect.
Final comparison runs (`tuning.role=final`) get no reporter: they are not trials.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import UpdateFinishedTrialError

from ablate.train.stops import Pruned
from ablate.tune.errors import TuneConfigError
from ablate.tune.storage import open_storage
from ablate.tune.study import PRUNER, build_pruner, trial_handle

log = logging.getLogger(__name__)

ROLES = ("tune", "final")
Reporter = Callable[[int, Mapping[str, float]], None]


def reporter_from_config(cfg: DictConfig | Mapping[str, Any], metric: str | None = None) -> Reporter | None:
    """The `on_eval` hook for a tuning trial job, or None when the job is not a tuning trial.

    `metric` is the key of the metrics dict to report (the task's primary metric); without it,
    `tuning.metric` from the config is used. A trial job with neither is a configuration error.
    """
    tuning = _tuning_node(cfg)
    if tuning is None:
        return None
    role = tuning.get("role", "tune")
    if role not in ROLES:
        raise TuneConfigError(f"tuning.role={role!r}: expected one of {', '.join(ROLES)}")
    if role == "final":
        return None
    missing = [key for key in ("study", "trial", "storage") if tuning.get(key) is None]
    if missing:
        raise TuneConfigError(
            f"tuning={tuning}: a trial job needs tuning.study, tuning.trial and tuning.storage "
            f"(missing: {', '.join(missing)})"
        )
    metric = metric or tuning.get("metric")
    if not metric:
        raise TuneConfigError(
            "reporter_from_config: no metric to report; pass metric=task.info.metric or set "
            "+tuning.metric=NAME"
        )
    return TrialReporter(str(tuning["storage"]), str(tuning["study"]), int(tuning["trial"]), metric)


class TrialReporter:
    """Reports one metric of each evaluation to a trial living in a storage."""

    def __init__(self, storage_url: str, study_name: str, trial_number: int, metric: str) -> None:
        storage = open_storage(storage_url)
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            pruner=build_pruner(attrs.get(PRUNER)),
            # The job only reports; a cheap sampler avoids building TPE state it never uses.
            sampler=optuna.samplers.RandomSampler(),
        )
        self.trial = trial_handle(study, trial_number)
        self.metric = metric
        self.detached = False

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            raise KeyError(
                f"tuning reporter: metric {self.metric!r} not in evaluation metrics "
                f"{sorted(metrics)}"
            )
        if self.detached:
            return
        value = float(metrics[self.metric])
        try:
            self.trial.report(value, step)
        except UpdateFinishedTrialError:
            # A resumed sweeper has already written this trial off (interrupted-trial rule) and
            # re-enqueued its parameters; finishing the job still helps (same run_id, reusable).
            log.warning("trial %d is already finished; no further reports", self.trial.number)
            self.detached = True
            return
        if self.trial.should_prune():
            raise TrialPruned(f"pruned at step {step}: {self.metric}={value:g}")


class TrialPruned(Pruned, optuna.TrialPruned):
    """A trial's pruner stopped the job."""


def _tuning_node(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any] | None:
    node = cfg.get("tuning")
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return None if node is None else dict(node)
