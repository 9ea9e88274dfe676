"""The grid sweeper (hydra/sweeper=grid, the default): unions of grids, and a sweep whose job
process is killed still runs its other jobs, records the dead cell as failed and writes its report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra.types import HydraContext

from ablate import records
from conftest import ROOT, children, clean_env, kill_mid_run, load_records, logged_step
from hydra_plugins.ablate_grid_sweeper.grid_sweeper import GridSweeper

DEADLINE_S = 300  # a guard against a hung child, not a timing assertion


def jobs(arguments: list[str], **settings) -> list[list[str]]:
    sweeper = GridSweeper(**settings)
    sweeper.hydra_context = HydraContext(config_loader=None, callbacks=None)
    return sweeper.job_overrides(arguments)


def test_a_union_of_grids_runs_each_grid_product_once():
    got = jobs(["lr=0.1"], params={"model.ssm": "true,false"},
               grids=[{"task": "shapes"}, {"task": "pathfinder", "task.image_size": "[64,64],[208,208]"}])
    assert got == [
        ["model.ssm=True", "task=shapes", "lr=0.1"], ["model.ssm=False", "task=shapes", "lr=0.1"],
        *([f"model.ssm={ssm}", "task=pathfinder", f"task.image_size={size}", "lr=0.1"]
          for ssm in ("True", "False") for size in ("[64,64]", "[208,208]")),
    ]


def test_a_cell_two_grids_share_runs_once_and_the_command_line_wins():
    assert jobs([], grids=[{"seed": "0,1"}, {"seed": "1,2"}]) == [["seed=0"], ["seed=1"], ["seed=2"]]
    # a key in params and in a grid: the grid's value; on the command line too: the command line's
    assert jobs(["seed=7"], params={"seed": "0,1", "x": "1"}, grids=[{"seed": "3"}]) == [["seed=7", "x=1"]]
    assert jobs([], params={"seed": "0,1"}, grids=[{"seed": "3"}]) == [["seed=3"]]
    assert jobs(["a=1,2"]) == [["a=1"], ["a=2"]]  # no grids: the basic sweeper's product


def test_a_grid_value_that_is_not_one_string_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"hydra.sweeper.grids\[1\].task.image_size=\[64, 64\]: give a value or a "
                                         r"sweep as one string"):
        GridSweeper(grids=[{"task": "shapes"}, {"task.image_size": [64, 64]}])


# Two cells, one at a time; 30 steps with a log line each, so the first can be killed mid-training.
LONG = ["hydra/launcher=local", "model=pico", "task=shapes", "trainer=cpu", "logger=none", "trainer.max_steps=30",
        "trainer.batch_size=8", "task.train_size=80", "task.val_size=40", "trainer.warmup_epochs=0",
        "trainer.checkpoint_every=5", "trainer.log_every=1", "model.ssm=false", "seed=0,1", "sweep=dies"]


def test_a_killed_job_fails_its_cell_the_sweep_goes_on_reports_and_a_rerun_completes_it(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", *LONG, f"paths.results={results}",
           f"paths.data={tmp_path / 'data'}"]
    # step 6 is logged after the checkpoint of step 5 was saved; the victim: the job process the local launcher started
    returncode, out = kill_mid_run(cmd, tmp_path, logged_step(results, 6),
                                   lambda pid: children(pid, b"hydra_plugins.ablate_launcher._worker"))
    assert returncode == 1, out[-3000:]
    assert "ablate: sweep dies: 1 of 2 cells completed, 1 failed" in out
    killed, done = sorted(load_records(results), key=lambda r: r["status"] != records.Status.FAILED)
    assert killed["status"] == records.Status.FAILED and done["status"] == records.Status.COMPLETED
    assert killed["error"]["type"] == "JobProcessDied" and "killed by signal SIGKILL" in killed["error"]["message"]
    assert "seed=0" in killed["overrides"]
    report = (tmp_path / "reports" / "dies" / "report.md").read_text()
    assert "JobProcessDied" in report and "killed by signal SIGKILL" in report

    # The same command again: the dead cell resumes from its checkpoint, the other is reused, and the
    # report lists both legs.
    again = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "ablate: sweep dies: 2 of 2 cells completed" in again.stdout
    resumed = records.read(results / "runs" / killed["run_id"] / "result.json")
    assert resumed["status"] == records.Status.COMPLETED and resumed["cost"]["resumed_from_step"] >= 5
    legs = [json.loads(line) for line in (results / "sweeps" / "dies" / "legs.jsonl").read_text().splitlines()]
    assert [leg["command"] for leg in legs] == [f"python run.py -m {' '.join(cmd[3:])}"] * 2
    report = (tmp_path / "reports" / "dies" / "report.md").read_text()
    assert report.count(f"`python run.py -m {' '.join(cmd[3:])}`") == 2
