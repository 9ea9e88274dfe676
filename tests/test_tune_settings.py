"""Every bad optuna_fair setting stops the sweep with one line naming the key, value and what is
allowed (TuneConfigError is a CompactHydraException: Hydra prints it without a traceback)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_tune_sweeper import run_app

BAD_SETTINGS = [
    (["hydra.sweeper.direction=up"], "hydra.sweeper.direction='up': expected maximize or minimize"),
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: expected an integer >= 1"),
    (["hydra.sweeper.n_jobs=-1"], "hydra.sweeper.n_jobs=-1: expected an integer >= 1"),
    (["hydra.sweeper.final_seeds=[0,0]"], "hydra.sweeper.final_seeds=[0, 0]: a seed is listed twice"),
    (["hydra.sweeper.sampler._target_=optuna.samplers.Nope"],
     "hydra.sweeper.sampler={'_target_': 'optuna.samplers.Nope', 'seed': 0}: Error loading"),
    (["hydra.sweeper.sampler._target_=collections.OrderedDict"],
     "hydra.sweeper.sampler={'_target_': 'collections.OrderedDict', 'seed': 0}: expected a node "
     "whose _target_ is an optuna sampler"),
    (["+hydra.sweeper.pruner.bogus=1"], "unexpected keyword argument 'bogus'"),
    (["hydra.sweeper.storage=ftp://host/x"],
     "hydra.sweeper.storage='ftp://host/x': unknown database scheme 'ftp'; expected sqlite:///PATH"),
    (["hydra.sweeper.storage=notaurl"], "hydra.sweeper.storage='notaurl': expected sqlite:///PATH"),
    (["hydra.sweeper.storage=postgresql://u:pw@127.0.0.1:1/db"],
     "tuning storage postgresql://u:***@127.0.0.1:1/db: the database driver is not installed"),
    (["hydra.sweeper.storage=sqlite:////proc/x/optuna.db"],
     "tuning storage sqlite:////proc/x/optuna.db: cannot open it (FileNotFoundError: "),
    (["hydra.sweeper.storage=sqlite:////tmp"],
     "tuning storage sqlite:////tmp: cannot open it (OperationalError: (sqlite3.OperationalError) "
     "unable to open database file)"),
    (["hydra.sweeper.storage=env:ABLATE_TEST_UNSET_URL"],
     "hydra.sweeper.storage=env:ABLATE_TEST_UNSET_URL: environment variable ABLATE_TEST_UNSET_URL is not set"),
    (["hydra.sweeper.storage=file:/nonexistent/url"],
     "hydra.sweeper.storage=file:/nonexistent/url: cannot read /nonexistent/url"),
    (["hydra.sweeper.per_arm=model.ssm"], "hydra.sweeper.per_arm=model.ssm: no levels given"),
    (["hydra.sweeper.per_arm=model.ssm", "model.ssm=true,true"],
     "model.ssm=true,true: a per-arm level is listed twice"),
    (["hydra.sweeper.per_arm=x"], "x=interval(-5, 5): the per-arm factor needs discrete levels"),
    (["x=tag(lin, interval(0,1))"], "x=tag(lin, interval(0,1)): unsupported tag(s) lin (allowed here: log)"),
    (["x=interval(2,1)"], "x=interval(2,1): interval needs start < end"),
    (["x=range(1,1)"], "x=range(1,1): a range needs a positive step and at least two values"),
]


@pytest.mark.parametrize("overrides,message", BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_without_a_traceback(tmp_path: Path, overrides: list[str],
                                                       message: str) -> None:
    proc = run_app(tmp_path / "bad", "hydra.sweeper.n_trials=1", *overrides, expect_rc=1)
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and "HYDRA_FULL_ERROR" not in line and "[HYDRA]" not in line]
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not list((tmp_path / "bad").glob("[0-9]*")), "no job may start"
