"""Study helpers: create-or-resume, the budget, interrupted trials, duplicate proposals.

A study records its own set-up in user attrs (`ablate.space`, `ablate.n_trials`, `ablate.sampler`,
`ablate.pruner`, `ablate.arm`), so jobs can rebuild the pruner and the report can show the space
and budget from the storage alone. A study keeps one search space for life: resuming it with a
different space is an error (the budget would no longer be comparable across arms).

Interrupted trials (the rule): a trial asked by a sweeper is tagged with that sweeper's sweep dir
(`ablate.sweep_dir`). When a sweeper starts, every RUNNING trial tagged with its own sweep dir, or
with none (killed between ask and tag), belongs to a sweep that died: it is told FAIL with
`ablate.not_run` saying so, and its parameters are enqueued again (`ablate.retry_of`). Such trials
do not count toward the budget, so nothing is lost and nothing is evaluated twice. One sweeper
per sweep dir; workers sharing a study each use their own sweep dir.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import optuna
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.pruners import BasePruner, NopPruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ablate.tune.errors import TuneConfigError

SPACE = "ablate.space"
N_TRIALS = "ablate.n_trials"
SAMPLER = "ablate.sampler"
PRUNER = "ablate.pruner"
ARM = "ablate.arm"
FINAL = "ablate.final"
# trial user attrs
SWEEP_DIR = "ablate.sweep_dir"
JOB = "ablate.job"
NOT_RUN = "ablate.not_run"
RETRY_OF = "ablate.retry_of"
DUPLICATE_OF = "ablate.duplicate_of"
FAIL_REASON = "ablate.fail_reason"
STATUS = "ablate.status"
RUN_ID = "ablate.run_id"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def build_sampler(cfg: Mapping[str, Any] | None) -> BaseSampler:
    return _build("sampler", cfg or {}, BaseSampler, "optuna.samplers.TPESampler")


def build_pruner(cfg: Mapping[str, Any] | None) -> BasePruner:
    """The configured pruner; `None` means no pruning (NopPruner)."""
    if not cfg:
        return NopPruner()
    return _build("pruner", cfg, BasePruner, "optuna.pruners.MedianPruner")


def _build(key: str, cfg: Mapping[str, Any], kind: type, example: str) -> Any:
    """Instantiate hydra.sweeper.<key>; a bad target or argument is one TuneConfigError line."""
    try:
        built = instantiate(dict(cfg)) if cfg else None
    except InstantiationException as exc:
        # Hydra's message names the target but not the setting; the cause says what was wrong.
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        reason = " ".join(str(cause).split())
        raise TuneConfigError(f"hydra.sweeper.{key}={dict(cfg)}: {reason}") from None
    if not isinstance(built, kind):
        raise TuneConfigError(
            f"hydra.sweeper.{key}={dict(cfg)}: expected a node whose _target_ is an optuna "
            f"{key}, e.g. {example}"
        )
    return built


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    direction: str,
    space: Mapping[str, BaseDistribution],
    n_trials: int,
    sampler: Mapping[str, Any] | None,
    pruner: Mapping[str, Any] | None,
    arm: str | None,
) -> optuna.Study:
    """Create the study, or resume it after checking that direction and space are unchanged.

    A resumed study's sampler gets seed + (trials so far): a seeded sampler restarted with its
    original seed would replay its first proposals, which are already in the study.
    """
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        sampler=build_sampler(sampler),
        pruner=build_pruner(pruner),
        load_if_exists=True,
    )
    done = len(study.get_trials(deepcopy=False))
    if done and sampler and sampler.get("seed") is not None:
        study.sampler = build_sampler({**sampler, "seed": int(sampler["seed"]) + done})
    stored_direction = study.direction.name.lower()
    if stored_direction != direction:
        raise TuneConfigError(
            f"hydra.sweeper.direction={direction}: study {name!r} was created with "
            f"{stored_direction}; set hydra.sweeper.study_name to start a new study"
        )
    stored_space = study.user_attrs.get(SPACE)
    if stored_space is not None and decode_space(stored_space) != dict(space):
        raise TuneConfigError(
            f"search space {_space_text(space)} differs from the one study {name!r} was created "
            f"with ({_space_text(decode_space(stored_space))}); set hydra.sweeper.study_name to "
            "start a new study"
        )
    attrs = {SPACE: encode_space(space), N_TRIALS: n_trials, SAMPLER: _plain(sampler),
             PRUNER: _plain(pruner), ARM: arm}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def encode_space(space: Mapping[str, BaseDistribution]) -> dict[str, str]:
    return {name: distribution_to_json(d) for name, d in space.items()}


def decode_space(encoded: Mapping[str, str]) -> dict[str, BaseDistribution]:
    return {name: json_to_distribution(text) for name, text in encoded.items()}


def recover_interrupted(study: optuna.Study, sweep_dir: str) -> list[int]:
    """Apply the interrupted-trial rule (module docstring); return the numbers marked FAIL."""
    stale = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get(SWEEP_DIR) in (None, sweep_dir)
    ]
    for trial in stale:
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})
        mark_not_run(study, trial.number, "interrupted: the sweep stopped before this trial was "
                     "told; its parameters were enqueued again")
    return [t.number for t in stale]


def mark_not_run(study: optuna.Study, number: int, reason: str) -> None:
    """Tell FAIL for a trial whose job never gave a result; it does not count toward the budget."""
    trial_handle(study, number).set_user_attr(NOT_RUN, reason)
    study.tell(number, state=TrialState.FAIL)


def trial_handle(study: optuna.Study, number: int) -> optuna.Trial:
    """A live handle on trial `number`, e.g. in the job process that evaluates it.

    Optuna has no public lookup from trial number to handle outside `optimize`; this is the same
    storage call `Study.tell(number)` makes, wrapped in the documented `Trial(study, trial_id)`.
    """
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState) -> None:
    """`study.tell`, tolerating samplers that call `Study.stop()` once they are exhausted.

    GridSampler does so in after_trial, which Optuna only allows inside `optimize`; by then the
    trial's state is already stored, so only a trial left unfinished is an error.
    """
    try:
        study.tell(trial, value, state=state)
    except RuntimeError:
        stored = study.get_trials(deepcopy=False)[trial.number]
        if not stored.state.is_finished():
            raise


def used_budget(study: optuna.Study) -> int:
    """Trials that count toward n_trials: finished ones that ran, plus those running now."""
    trials = study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
    return sum(1 for t in trials if NOT_RUN not in t.user_attrs)


def completed_twin(study: optuna.Study, params: Mapping[str, Any]) -> FrozenTrial | None:
    """An earlier COMPLETE trial with exactly these parameters, if any."""
    key = params_key(params)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if params_key(trial.params) == key:
            return trial
    return None


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """One arm's entry of tuning.json (ablate.records.tuning): its space, budget, sampler and pruner as the sweeper set them,
    its trial counts (those written off as not run apart), its best trial and its final runs."""
    attrs = study.user_attrs
    if SPACE not in attrs:
        raise ValueError(f"study {study.study_name!r} has no {SPACE} attr: it was not created by the "
                         "optuna_fair sweeper")
    counts = {state.name.lower(): 0 for state in FINISHED}
    counts["not_run"] = 0
    for t in study.get_trials(deepcopy=False):
        if NOT_RUN in t.user_attrs:
            counts["not_run"] += 1
        elif t.state in FINISHED:
            counts[t.state.name.lower()] += 1
    best = best_trial(study)
    return {
        "study": study.study_name, "arm": attrs.get(ARM), "space": attrs[SPACE], "n_trials": attrs.get(N_TRIALS),
        "sampler": attrs.get(SAMPLER), "pruner": attrs.get(PRUNER), "trials": counts,
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params},
        "final": attrs.get(FINAL) or {},
    }


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or None when no trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str)


def _plain(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if cfg is None else json.loads(json.dumps(dict(cfg), default=str))


def _space_text(space: Mapping[str, BaseDistribution]) -> str:
    return ", ".join(f"{name}: {d}" for name, d in space.items())
