"""The optuna_fair Hydra sweeper end to end, on the tiny objective app (tests/apps/tune_app).

Each test runs the app as `python app.py -m ...` (Hydra's real multirun path, basic launcher).
The app's objective: score = 10 - (x-1)^2 - (y+2)^2 + (1 if model.ssm else 0).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from optuna.trial import TrialState

from ablate.analysis.tuning import tuning_section
from ablate.records.tuning import SUMMARY_FILE
from ablate.tune import study as st

APP = Path(__file__).parent / "apps" / "tune_app" / "app.py"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_app(sweep_dir: Path, *overrides: str, expect_rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(APP), "-m", f"hydra.sweep.dir={sweep_dir}", *overrides],
        cwd=sweep_dir.parent, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == expect_rc, proc.stderr[-3000:]
    return proc


def load(sweep_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir}/optuna.db")


def score(x: float, y: float, ssm: bool = True) -> float:
    return 10.0 - (x - 1.0) ** 2 - (y + 2.0) ** 2 + (1.0 if ssm else 0.0)


def job_overrides(sweep_dir: Path, job: int) -> list[str]:
    return yaml.safe_load((sweep_dir / str(job) / ".hydra" / "overrides.yaml").read_text())


def test_plugin_is_discoverable_like_any_hydra_sweeper() -> None:
    names = [cls.__name__ for cls in Plugins.instance().discover(Sweeper)]
    assert "OptunaFairSweeper" in names
    options = ConfigStore.instance().list("hydra/sweeper")
    assert "optuna_fair.yaml" in options


def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    args = ("hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "die_at_job=3",
            f"die_marker={tmp_path / 'died'}")
    # Dies inside job 3: trial 2 ran but was never told, trial 3 is mid-run; both stay RUNNING.
    run_app(sweep, *args, expect_rc=3)
    before = load(sweep, "search").trials
    assert [t.state for t in before] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING] * 2

    run_app(sweep, *args)  # the same command resumes the study named after the sweep dir

    trials = load(sweep, "search").trials
    interrupted = [t for t in trials if st.NOT_RUN in t.user_attrs]
    counted = [t for t in trials if st.NOT_RUN not in t.user_attrs]
    assert [t.number for t in interrupted] == [2, 3]
    assert all(t.state == TrialState.FAIL for t in interrupted)
    assert [t.number for t in counted] == [0, 1, 4, 5]  # numbering continues
    assert all(t.state == TrialState.COMPLETE for t in counted)  # budget 4: only 2 more ran
    # Each interrupted parameter set was evaluated exactly once more; nothing ran twice.
    assert [t.user_attrs.get(st.RETRY_OF) for t in counted] == [None, None, 2, 3]
    assert [t.params for t in counted[2:]] == [t.params for t in interrupted]
    assert len({st.params_key(t.params) for t in counted}) == 4
    for t in counted:
        assert t.value == score(**t.params)
    # Job folders continue after the killed run's: none is overwritten.
    assert [t.user_attrs[st.JOB] for t in counted] == [0, 1, 4, 5]
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == list(range(6))
    summary = json.loads((sweep / "tuning.json").read_text())["studies"][0]
    assert summary["trials"] == {"complete": 4, "pruned": 0, "fail": 0, "not_run": 2}


def test_failures_divergence_and_pruning_are_told_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    # The grid visits each of the 6 points once: x=-3 fails, y=4 diverges, (3,-2) scores 7 and
    # is pruned by ThresholdPruner(lower=8) at its first report, (1,-2) completes with 11.
    run_app(sweep, "record=true", "fail_if_x_below=0", "diverge_if_y_above=3",
            "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=8")
    trials = load(sweep, "grid").trials
    assert len(trials) == 6
    for t in trials:
        x, y = t.params["x"], t.params["y"]
        attrs = t.user_attrs
        if x < 0:
            assert t.state == TrialState.FAIL and attrs[st.STATUS] == "failed"
            assert attrs[st.FAIL_REASON] == f"RuntimeError: x={x} is below 0"
        elif y > 3:
            assert t.state == TrialState.PRUNED and attrs[st.STATUS] == "diverged"
        elif score(x, y) < 8:
            assert t.state == TrialState.PRUNED and attrs[st.STATUS] == "pruned"
            assert t.intermediate_values == {0: score(x, y)}  # stopped at the first report
        else:
            assert t.state == TrialState.COMPLETE and t.value == score(x, y) == 11.0
            assert list(t.intermediate_values) == [0, 1, 2]
        assert attrs[st.JOB] == t.number


def test_per_arm_studies_get_equal_budgets_and_a_final_comparison(tmp_path: Path) -> None:
    sweep = tmp_path / "fair"
    args = ("model.ssm=true,false", "hydra.sweeper.per_arm=model.ssm", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2", "hydra.sweeper.final_seeds=[0,1]")
    run_app(sweep, *args)

    names = ["fair[model.ssm=true]", "fair[model.ssm=false]"]
    arms = {name: load(sweep, name) for name in names}
    for name, study in arms.items():
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, name
        assert study.user_attrs[st.N_TRIALS] == 2
    on, off = (arms[n] for n in names)
    # Same sampler seed and space: both arms were offered the same parameters.
    assert [t.params for t in on.trials] == [t.params for t in off.trials]
    assert [t.value for t in on.trials] == [score(**t.params, ssm=True) for t in on.trials]

    # Jobs 0-3 tuned (arms interleaved); 4-7 are the final runs, each arm with its own best.
    finals = {job: job_overrides(sweep, job) for job in range(4, 8)}
    assert not (sweep / "8").exists()
    for name, study in arms.items():
        level = name.split("=")[1].rstrip("]")
        best = study.best_trial
        runs = [o for o in finals.values() if f"+tuning.study='{name}'" in o]
        assert sorted(next(a for a in o if a.startswith("seed=")) for o in runs) == ["seed=0", "seed=1"]
        for o in runs:
            assert f"model.ssm={level.capitalize()}" in o
            assert f"x={best.params['x']!r}" in o and f"y={best.params['y']!r}" in o
            assert f"+tuning.trial={best.number}" in o and "+tuning.role=final" in o
        final = study.user_attrs[st.FINAL]
        assert {k: v["status"] for k, v in final.items()} == {"0": "completed", "1": "completed"}
        assert all(v["value"] == best.value for v in final.values())

    run_app(sweep, *args)  # everything done: the same command launches nothing new
    assert not (sweep / "8").exists()

    text = tuning_section(json.loads((sweep / SUMMARY_FILE).read_text()))  # what the report reads
    assert "| `fair[model.ssm=true]` | model.ssm=true | 2 | 2 | 0 | 0 |" in text
    assert "| `x` | float in [-5, 5] |" in text


def test_a_bad_search_space_stops_with_one_clear_line(tmp_path: Path) -> None:
    proc = run_app(tmp_path / "bad", "x=tag(log, interval(0, 1))", expect_rc=1)
    assert "x=tag(log, interval(0, 1)): a log interval needs bounds > 0" in proc.stderr
    assert not (tmp_path / "bad" / "0").exists()


def test_arms_advance_in_lock_step_so_a_killed_sweep_leaves_them_one_trial_apart(tmp_path: Path) -> None:
    sweep = tmp_path / "lockstep"
    names = ["lockstep[model.ssm=true]", "lockstep[model.ssm=false]"]
    args = ("model.ssm=true,false", "hydra.sweeper.per_arm=model.ssm", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=1", "die_at_job=3", f"die_marker={tmp_path / 'died'}")

    def complete() -> list[int]:
        return [len([t for t in load(sweep, n).trials if t.state == TrialState.COMPLETE]) for n in names]

    run_app(sweep, *args, expect_rc=3)  # killed in job 3, after three trials
    assert complete() == [2, 1]  # alternating arms; before the fix: [3, 0]
    run_app(sweep, *args)
    assert complete() == [3, 3]
