"""Fair tuning: one study per arm, equal budgets, then a final comparison with each arm's best.

The loop, per batch of `n_jobs` jobs:
    ask   trials in lock step: each slot goes to the arm with the least budget used, so an
          interrupted search leaves the arms at most one trial apart; each trial is tagged
          with this sweep's dir;
    run   one Hydra job per distinct proposal through the configured launcher (any launcher:
          local, GPU pool, Slurm), with `+tuning.study/trial/storage/role=tune` overrides;
    tell  each trial its outcome (ablate.tune.outcome); a failed job is a FAIL trial, never a
          failed sweep.
Identical proposals: when the sampler proposes parameters identical to an earlier COMPLETE trial
of the same study, no job runs; the new trial is told that trial's value and carries
`ablate.duplicate_of` (the runner would reuse that record anyway, since the config, hence the
run_id, is the same). Identical proposals within one batch share one job.

Job numbers (Hydra's `hydra.job.num`, the job's subfolder) continue after the highest used in the
sweep dir, so a resumed sweep never overwrites an earlier job's folder.

Final comparison (`final_seeds`): each arm runs with its own best parameters once per seed
(`seed=<s>`, `+tuning.role=final`, `+tuning.study`, `+tuning.trial` = the best trial). Done runs
are kept in the study attr `ablate.final` and skipped when the command is re-run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from hydra.core.override_parser.types import QuotedString, Quote
from hydra.core.utils import JobReturn
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from ablate.records import Status, override_parts, write_json_atomic
from ablate.records.tuning import SUMMARY_FILE, describe, dimension
from ablate.tune import study as st
from ablate.tune.errors import TuneConfigError
from ablate.tune.outcome import Outcome, outcome_of
from ablate.tune.space import Arm, SweepPlan
from ablate.secrets import redact
from ablate.tune.storage import open_storage

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
# Launch(batch of override lists, first job number) -> one JobReturn per job, in order.
Launch = Callable[[list[list[str]], int], Sequence[JobReturn]]


@dataclass(frozen=True)
class TuneSettings:
    direction: str = "maximize"
    n_trials: int = 20
    n_jobs: int = 1
    sampler: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None
    final_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise TuneConfigError(
                f"hydra.sweeper.direction={self.direction!r}: expected maximize or minimize"
            )
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TuneConfigError(f"hydra.sweeper.{key}={value!r}: expected an integer >= 1")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in self.final_seeds):
            raise TuneConfigError(
                f"hydra.sweeper.final_seeds={list(self.final_seeds)}: expected a list of integers"
            )
        if len(set(self.final_seeds)) != len(self.final_seeds):
            raise TuneConfigError(
                f"hydra.sweeper.final_seeds={list(self.final_seeds)}: a seed is listed twice; "
                "expected distinct seeds (one final run per seed and arm)"
            )


@dataclass
class ArmStudy:
    arm: Arm
    study: optuna.Study

    @property
    def name(self) -> str:
        return self.study.study_name


@dataclass
class _Job:
    arm: ArmStudy
    overrides: list[str]
    trials: list[optuna.Trial] = field(default_factory=list)  # first runs, the rest are twins
    seed: int | None = None  # final comparison runs only
    best: FrozenTrial | None = None


class FairTuner:
    """Runs the per-arm studies and the final comparison of one sweep."""

    def __init__(
        self, plan: SweepPlan, settings: TuneSettings, storage_url: str, study_name: str,
        sweep_dir: Path,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.storage_url = storage_url
        self.study_name = study_name
        self.sweep_dir = Path(sweep_dir).resolve()
        self.storage = open_storage(storage_url)
        self._next_job = 0
        if redact(storage_url) != storage_url:
            log.warning("hydra.sweeper.storage holds a password: every job gets it as an override "
                        "(ablate's files hold it redacted, the launcher's output and pickled jobs "
                        "do not); pass hydra.sweeper.storage=env:NAME or file:PATH instead")

    def run(self, launch: Launch) -> list[Sequence[JobReturn]]:
        arms = self.open_studies()
        for arm in arms:
            stale = st.recover_interrupted(arm.study, str(self.sweep_dir))
            if stale:
                log.warning("%s: interrupted trials %s marked FAIL, parameters re-enqueued",
                            arm.name, stale)
        self._next_job = self._first_free_job(arms)
        returns: list[Sequence[JobReturn]] = []
        while batch := self._ask_batch(arms):
            returns.append(self._run_trials(batch, launch))
        self._write_summary(arms)
        if self.settings.final_seeds:
            returns.extend(self._run_final(arms, launch))
            self._write_summary(arms)
        return [r for r in returns if r]

    def open_studies(self) -> list[ArmStudy]:
        """One study per arm: same space, sampler (and seed), pruner and budget."""
        space = "; ".join(f"{k}: {describe(dimension(distribution_to_json(d)))}"
                          for k, d in self.plan.distributions().items())
        log.info("tuning %s in %s: %d trials per arm; %s", self.study_name,
                 redact(self.storage_url), self.settings.n_trials, space)
        return [
            ArmStudy(arm, st.open_study(
                self.storage, self.arm_study_name(arm), direction=self.settings.direction,
                space=self.plan.distributions(), n_trials=self.settings.n_trials,
                sampler=self.settings.sampler, pruner=self.settings.pruner, arm=arm.label,
            ))
            for arm in self.plan.arms
        ]

    def arm_study_name(self, arm: Arm) -> str:
        return self.study_name if arm.label is None else f"{self.study_name}[{arm.label}]"

    # --- tuning -------------------------------------------------------------------------------

    def _ask_batch(self, arms: list[ArmStudy]) -> list[tuple[ArmStudy, optuna.Trial]]:
        # Lock step: each slot goes to the arm that has used the least budget (the first such arm
        # on a tie), across batches too, so a sweep stopped at any point leaves the arms at most
        # one trial apart (with n_jobs=1 the arms simply alternate).
        used = [st.used_budget(a.study) for a in arms]
        batch: list[tuple[ArmStudy, optuna.Trial]] = []
        while len(batch) < self.settings.n_jobs and min(used) < self.settings.n_trials:
            i = used.index(min(used))
            trial = arms[i].study.ask(self.plan.distributions())
            trial.set_user_attr(st.SWEEP_DIR, str(self.sweep_dir))
            batch.append((arms[i], trial))
            used[i] += 1
        return batch

    def _run_trials(
        self, batch: list[tuple[ArmStudy, optuna.Trial]], launch: Launch
    ) -> Sequence[JobReturn]:
        jobs: list[_Job] = []
        for arm, trial in batch:
            twin = st.completed_twin(arm.study, trial.params)
            if twin is not None:
                self._tell_twin(arm, trial, twin)
                continue
            key = st.params_key(trial.params)
            shared = next((j for j in jobs if j.arm is arm and
                           st.params_key(j.trials[0].params) == key), None)
            if shared is not None:
                shared.trials.append(trial)
                continue
            jobs.append(_Job(arm, self._trial_overrides(arm, trial), [trial]))
        if not jobs:
            return []
        results = self._launch(jobs, launch)
        outcomes = [outcome_of(r) for r in results]
        mismatch = next((o for o in outcomes if self._wrong_direction(o)), None)
        for job, outcome in zip(jobs, outcomes):
            self._tell(job, outcome if mismatch is None else _direction_failure(outcome))
        if mismatch is not None:
            wanted = "maximize" if mismatch.higher_is_better else "minimize"
            raise TuneConfigError(
                f"hydra.sweeper.direction={self.settings.direction}: the jobs' primary metric is "
                f"{'higher' if mismatch.higher_is_better else 'lower'}-is-better; use "
                f"hydra.sweeper.direction={wanted} with a new hydra.sweeper.study_name"
            )
        return results

    def _trial_overrides(self, arm: ArmStudy, trial: optuna.Trial) -> list[str]:
        return [*self.plan.fixed, *arm.arm.overrides, *self.plan.param_overrides(trial.params),
                *self._tuning_overrides(arm.name, trial.number, "tune")]

    def _tuning_overrides(self, study: str, trial: int, role: str) -> list[str]:
        # tuning.params names the tuned keys: they are not factors of the record (each arm's final
        # runs use its own best values, and must still pair with the other arm's).
        tuned = ",".join(_quote(name) for name in sorted(self.plan.distributions()))
        return [f"+tuning.study={_quote(study)}", f"+tuning.trial={trial}",
                f"+tuning.storage={_quote(self.storage_url)}", f"+tuning.role={role}", f"+tuning.params=[{tuned}]"]

    def _launch(self, jobs: list[_Job], launch: Launch) -> Sequence[JobReturn]:
        first = self._next_job
        self._next_job += len(jobs)
        for number, job in enumerate(jobs, start=first):
            for trial in job.trials:
                trial.set_user_attr(st.JOB, number)
        try:
            results = launch([job.overrides for job in jobs], first)
        except BaseException as exc:
            # Nothing came back: give these parameters back to the study, then stop the sweep.
            self._abandon(jobs, f"not run: launching the batch failed ({type(exc).__name__}: {exc})")
            raise
        if len(results) != len(jobs):
            self._abandon(jobs, f"not run: the launcher returned {len(results)} results")
            raise RuntimeError(f"launcher returned {len(results)} results for {len(jobs)} jobs")
        return results

    def _abandon(self, jobs: list[_Job], reason: str) -> None:
        for job in jobs:
            for trial in job.trials:
                job.arm.study.enqueue_trial(dict(trial.params), user_attrs={st.RETRY_OF: trial.number})
                st.mark_not_run(job.arm.study, trial.number, reason[:500])

    def _tell(self, job: _Job, outcome: Outcome) -> None:
        leader = job.trials[0]
        for trial in job.trials:
            if trial is not leader:
                trial.set_user_attr(st.DUPLICATE_OF, leader.number)
            trial.set_user_attr(st.STATUS, outcome.status)
            if outcome.run_id:
                trial.set_user_attr(st.RUN_ID, outcome.run_id)
            if outcome.reason:
                trial.set_user_attr(st.FAIL_REASON, outcome.reason)
            st.tell(job.arm.study, trial, outcome.value, outcome.state)
        log.info("%s trial %d: %s %s", job.arm.name, leader.number, outcome.state.name,
                 outcome.value if outcome.state == TrialState.COMPLETE else outcome.reason)

    def _tell_twin(self, arm: ArmStudy, trial: optuna.Trial, twin: FrozenTrial) -> None:
        trial.set_user_attr(st.DUPLICATE_OF, twin.number)
        for key in (st.STATUS, st.RUN_ID, st.JOB):
            if key in twin.user_attrs:
                trial.set_user_attr(key, twin.user_attrs[key])
        st.tell(arm.study, trial, twin.value, TrialState.COMPLETE)
        log.info("%s trial %d: same parameters as trial %d, told its value %s without a job",
                 arm.name, trial.number, twin.number, twin.value)

    def _wrong_direction(self, outcome: Outcome) -> bool:
        if outcome.higher_is_better is None:
            return False
        return outcome.higher_is_better != (self.settings.direction == "maximize")

    def _first_free_job(self, arms: list[ArmStudy]) -> int:
        used = [int(p.name) for p in self.sweep_dir.glob("*") if p.is_dir() and p.name.isdigit()]
        for arm in arms:
            used += [t.user_attrs[st.JOB] for t in arm.study.get_trials(deepcopy=False)
                     if st.JOB in t.user_attrs and t.user_attrs.get(st.SWEEP_DIR) == str(self.sweep_dir)]
            used += [entry["job"] for entry in (arm.study.user_attrs.get(st.FINAL) or {}).values()]
        return max(used, default=-1) + 1

    # --- final comparison ---------------------------------------------------------------------

    def _run_final(self, arms: list[ArmStudy], launch: Launch) -> list[Sequence[JobReturn]]:
        jobs = self._final_jobs(arms)
        returns = []
        for start in range(0, len(jobs), self.settings.n_jobs):
            chunk = jobs[start:start + self.settings.n_jobs]
            first = self._next_job
            self._next_job += len(chunk)
            results = launch([job.overrides for job in chunk], first)
            for number, (job, result) in enumerate(zip(chunk, results), start=first):
                self._record_final(job, number, outcome_of(result))
            returns.append(results)
        return returns

    def _final_jobs(self, arms: list[ArmStudy]) -> list[_Job]:
        bests = {arm.name: st.best_trial(arm.study) for arm in arms}
        empty = [name for name, best in bests.items() if best is None]
        if empty:
            raise RuntimeError(
                f"no final comparison: study {', '.join(empty)} has no completed trial "
                f"(see {self.sweep_dir / SUMMARY_FILE})"
            )
        jobs = []
        for arm in arms:
            best = bests[arm.name]
            assert best is not None
            done = arm.study.user_attrs.get(st.FINAL) or {}
            params = [o for o in self.plan.param_overrides(best.params) if _key(o) != "seed"]
            for seed in self.settings.final_seeds:
                entry = done.get(str(seed)) or {}
                if entry.get("trial") == best.number and entry.get("status") == Status.COMPLETED:
                    log.info("%s: final run seed=%d already done (job %s)", arm.name, seed, entry["job"])
                    continue
                overrides = [*(o for o in self.plan.fixed if _key(o) != "seed"), *arm.arm.overrides,
                             *params, f"seed={seed}",
                             *self._tuning_overrides(arm.name, best.number, "final")]
                jobs.append(_Job(arm, overrides, seed=seed, best=best))
        return jobs

    def _record_final(self, job: _Job, number: int, outcome: Outcome) -> None:
        assert job.best is not None and job.seed is not None
        study = job.arm.study
        done = dict(study.user_attrs.get(st.FINAL) or {})
        done[str(job.seed)] = {"trial": job.best.number, "job": number, "status": outcome.status,
                               "value": outcome.value, "run_id": outcome.run_id,
                               "reason": outcome.reason}
        study.set_user_attr(st.FINAL, done)
        log.info("%s final seed=%d: %s %s", job.arm.name, job.seed, outcome.status,
                 outcome.value if outcome.reason is None else outcome.reason)

    # --- summary ------------------------------------------------------------------------------

    def _write_summary(self, arms: list[ArmStudy]) -> None:
        write_json_atomic(self.sweep_dir / SUMMARY_FILE, {
            "storage": redact(self.storage_url),
            "direction": self.settings.direction,
            "n_trials": self.settings.n_trials,
            "studies": [st.study_summary(arm.study) for arm in arms],
        })


def _direction_failure(outcome: Outcome) -> Outcome:
    return Outcome(TrialState.FAIL, reason="metric direction differs from the study's direction",
                   status=Status.FAILED, run_id=outcome.run_id, higher_is_better=outcome.higher_is_better)


def _key(override: str) -> str:
    return override_parts(override)[0]


def _quote(text: str) -> str:
    return QuotedString(text=text, quote=Quote.single).with_quotes()
