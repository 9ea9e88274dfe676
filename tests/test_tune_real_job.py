"""One tiny real tuning trial through run.py: the record, the trial and the report agree."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablate.tune import study as st

RUN = Path(__file__).resolve().parent.parent / "run.py"


@pytest.mark.slow
def test_a_real_trial_reports_its_metric_and_is_told_the_records_value(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "-m", "hydra/sweeper=optuna_fair", "sweep=tune",
         "task=shapes", "task.train_size=60", "task.val_size=30", "model=pico", "trainer=cpu",
         "logger=none", "trainer.max_steps=2", "trainer.lr_base=tag(log, interval(1e-4, 1e-2))",
         "hydra.sweeper.n_trials=1",
         # Until the runner passes metric=task.info.metric to reporter_from_config:
         "+tuning.metric=top1",
         # Until conf/config.yaml excludes tuning.storage/study from override_dirname:
         "hydra.sweep.subdir=${hydra.job.num}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "results" / "sweeps" / "tune"
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{sweep}/optuna.db")
    [trial] = study.trials
    run_dir = tmp_path / "results" / "runs" / trial.user_attrs[st.RUN_ID]
    record = json.loads((run_dir / "result.json").read_text())

    assert trial.state == TrialState.COMPLETE and record["status"] == "completed"
    assert trial.value == record["metrics"]["top1"]
    assert list(trial.intermediate_values.values()) == [record["metrics"]["top1"]]
    assert record["tuning"]["study"] == "tune" and record["tuning"]["trial"] == 0
    assert record["config"]["trainer"]["lr_base"] == trial.params["trainer.lr_base"]
    report = (tmp_path / "reports" / "tune" / "report.md").read_text()
    assert "| `trainer.lr_base` | float in [0.0001, 0.01], log scale |" in report


@pytest.mark.slow
def test_per_arm_tuning_with_an_env_storage_reference_and_long_job_names(tmp_path: Path, tiny_args) -> None:
    from conftest import clean_env, load_records, run_cli

    url = f"sqlite:///{tmp_path}/store/optuna.db"
    env = clean_env(ABLATE_TEST_OPTUNA_URL=url)
    args = ["-m", "hydra/sweeper=optuna_fair", *tiny_args, "sweep=tune", "trainer.eval_every=1",
            "model.ssm=true,false", "hydra.sweeper.per_arm=model.ssm",
            "trainer.lr_base=tag(log, interval(1e-4, 1e-2))", "trainer.weight_decay=interval(0, 0.1)",
            "hydra.sweeper.n_trials=1", "hydra.sweeper.final_seeds=[0]",
            "hydra.sweeper.storage=env:ABLATE_TEST_OPTUNA_URL"]
    run_cli(args, tmp_path, env=env)
    sweep = tmp_path / "results" / "sweeps" / "tune"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    # Named by their overrides: 340+ bytes uncut, which failed with "File name too long".
    assert len(jobs) == 4 and all(len(p.name.encode()) == 255 for p in jobs)
    assert sum("+tuning.role=final" in p.name for p in jobs) == 2
    # Jobs got the reference, never the URL behind it.
    for job in jobs:
        assert "+tuning.storage='env:ABLATE_TEST_OPTUNA_URL'" in (job / ".hydra" / "overrides.yaml").read_text()
    records = load_records(tmp_path / "results")
    assert {r["tuning"]["storage"] for r in records} == {"env:ABLATE_TEST_OPTUNA_URL"}
    assert all(r["status"] == "completed" for r in records)
    # The report's process has the variable too, so it opens the studies.
    report = (tmp_path / "reports" / "tune" / "report.md").read_text()
    assert "Studies in `env:ABLATE_TEST_OPTUNA_URL`" in report
    assert "| `tune[model.ssm=true]` | model.ssm=true | 1 | 1 | 0 | 0 |" in report

    run_cli(args, tmp_path, env=env)  # the same command again: same folders, nothing new
    assert sorted(p for p in sweep.iterdir() if p.is_dir()) == jobs
