"""hydra/launcher=local: a GPU-pool launcher, one fresh process per job (tests/apps/launch_app)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, RunMode

from hydra_plugins.ablate_launcher.local_launcher import (
    STDERR_FILE, STDOUT_FILE, JobProcessDied, available_cores, plan_slots, visible_gpus,
)

APP_DIR = Path(__file__).parent / "apps" / "launch_app"
sys.path.insert(0, str(APP_DIR))
import launch_app  # noqa: E402  (the task function must be importable by name in the job processes)


def launch(tmp_path: Path, launcher_overrides: list, jobs: list) -> list:
    """Compose the app's multirun config and call the launcher the way Hydra's sweeper does."""
    common = [f"out={tmp_path / 'm'}"]
    with initialize_config_dir(config_dir=str(APP_DIR / "conf"), version_base="1.3", job_name="launch_app"):
        hydra = GlobalHydra.instance().hydra
        config = hydra.compose_config(
            "config", overrides=["hydra/launcher=local", f"hydra.sweep.dir={tmp_path / 'sweep'}", *launcher_overrides, *common],
            run_mode=RunMode.MULTIRUN,
        )
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(config))
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=launch_app.task, config=config)
        return list(launcher.launch([[*job, *common] for job in jobs], initial_job_idx=0))


def marker(tmp_path: Path, name: str, kind: str = "start") -> dict:
    return json.loads((tmp_path / "m" / f"{name}.{kind}.json").read_text())


def test_gpu_pool_gives_each_job_its_gpus_and_survives_failing_jobs(tmp_path, capfd):
    jobs = [
        ["name=first", "peer=second"],  # these two run at once: each waits for the other to start
        ["name=second", "peer=first"],
        ["name=boom", "action=raise"],
        ["name=exit", "action=exit"],
        ["name=kill", "action=kill"],
        ["name=last"],
        ["name=flop", "action=failed"],
    ]
    returns = launch(tmp_path, ["hydra.launcher.gpus=[0,1,2,3]", "hydra.launcher.gpus_per_job=2"], jobs)
    # one line per job: how its process ended, or, when it ended normally, the status its record gives
    captured = capfd.readouterr()
    states = dict(re.findall(r"\t#(\d+) (completed|failed|FAILED)", captured.err + captured.out))
    assert states == {"0": "completed", "1": "completed", "2": "FAILED", "3": "FAILED", "4": "FAILED",
                      "5": "completed", "6": "failed"}

    assert [r.overrides[0] for r in returns] == [job[0] for job in jobs]
    by_name = {job[0].removeprefix("name="): ret for job, ret in zip(jobs, returns)}
    for name in ("first", "second", "last", "flop"):
        assert by_name[name].status == JobStatus.COMPLETED
        assert by_name[name].return_value == {"name": name, **({"status": "failed"} if name == "flop" else {})}
    statuses = {name: ret.status for name, ret in by_name.items()}
    assert statuses["boom"] == statuses["exit"] == statuses["kill"] == JobStatus.FAILED
    assert isinstance(by_name["boom"]._return_value, ValueError)
    assert str(by_name["boom"]._return_value) == "job boom raised on purpose"
    # By name: Hydra's plugin scan re-executes the launcher module, redefining its classes.
    assert type(by_name["exit"]._return_value).__name__ == JobProcessDied.__name__
    assert "exited with code 1" in str(by_name["exit"]._return_value)
    assert "killed by signal SIGKILL" in str(by_name["kill"]._return_value)

    starts = {name: marker(tmp_path, name) for name in by_name}
    assert {s["cuda_visible_devices"] for s in starts.values()} == {"0,1", "2,3"}
    assert starts["first"]["cuda_visible_devices"] != starts["second"]["cuda_visible_devices"]
    assert marker(tmp_path, "first", "end")["saw_peer"] and marker(tmp_path, "second", "end")["saw_peer"]
    assert max(s["running_at_start"] for s in starts.values()) <= 2
    assert len({s["pid"] for s in starts.values()}) == len(jobs)  # a fresh process per job
    threads = str(max(1, available_cores() // 2))
    assert {s["omp_num_threads"] for s in starts.values()} == {threads}


def test_job_output_goes_to_its_folder(tmp_path):
    returns = launch(tmp_path, ["hydra.launcher.gpus=[]"], [["name=ok"], ["name=boom", "action=raise"]])
    ok_dir, boom_dir = (Path(ret.hydra_cfg.hydra.runtime.output_dir) for ret in returns)
    assert ok_dir == tmp_path / "sweep" / "0"
    assert (ok_dir / STDOUT_FILE).read_text().strip() == "stdout of ok"
    assert (ok_dir / STDERR_FILE).read_text().strip() == "stderr of ok"
    assert "ValueError: job boom raised on purpose" in (boom_dir / STDERR_FILE).read_text()
    assert "stderr of ok" not in (boom_dir / STDERR_FILE).read_text()


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))  # what unpickling this would run


def test_pickles_pass_through_a_private_temp_folder_not_the_job_folder(tmp_path, monkeypatch):
    import pickle
    import tempfile

    private_root = tmp_path / "tmp"
    private_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_root))
    planted = tmp_path / "sweep" / "0" / ".launcher"
    planted.mkdir(parents=True)
    for name in ("return.pkl", "job.pkl"):  # where earlier versions read them from
        (planted / name).write_bytes(pickle.dumps(_Planted(tmp_path / f"code-ran-{name}")))
    (ret,) = launch(tmp_path, ["hydra.launcher.gpus=[]"], [["name=ok"]])
    assert ret.status == JobStatus.COMPLETED and ret.return_value == {"name": "ok"}
    assert not list(tmp_path.glob("code-ran-*"))
    payload, result = (Path(arg) for arg in marker(tmp_path, "ok")["argv"][1:])
    assert payload.parent == result.parent and payload.parent.parent.parent == private_root
    assert list(private_root.iterdir()) == []  # removed when the sweep ended


def test_cpu_mode_runs_max_parallel_jobs_sharing_the_cores(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, whatever this machine has
    jobs = [["name=a", "peer=b"], ["name=b", "peer=a"], ["name=c"]]
    returns = launch(tmp_path, ["hydra.launcher.max_parallel=2"], jobs)
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 3
    threads = str(max(1, available_cores() // 2))  # 1 on a 2-core machine
    for name in ("a", "b", "c"):
        start = marker(tmp_path, name)
        assert start["omp_num_threads"] == start["ablate_num_threads"] == threads
        assert start["cuda_visible_devices"] == ""
    assert marker(tmp_path, "a", "end")["saw_peer"] and marker(tmp_path, "b", "end")["saw_peer"]
    assert max(marker(tmp_path, n)["running_at_start"] for n in "abc") <= 2


def test_command_line_multirun_finds_the_plugin(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "launch_app.py", "-m", "hydra/launcher=local", "name=x,y",
         f"out={tmp_path / 'm'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=APP_DIR, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Launching 2 jobs locally: 1 CPU job(s) at once" in done.stdout + done.stderr
    assert marker(tmp_path, "x", "end") == marker(tmp_path, "y", "end") == {"saw_peer": None}
    assert (tmp_path / "sweep" / "1" / STDOUT_FILE).read_text().strip() == "stdout of y"


@pytest.mark.parametrize("setting, message", [
    ("hydra.launcher.max_parallel=0", "hydra.launcher.max_parallel=0: must be null or an integer >= 1"),
    ("hydra.launcher.gpus_per_job=0", "hydra.launcher.gpus_per_job=0: must be an integer >= 1"),
])
def test_a_bad_launcher_setting_is_one_line_without_traceback(tmp_path, setting, message):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "launch_app.py", "-m", "hydra/launcher=local", "name=x,y", setting,
         f"out={tmp_path / 'm'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=APP_DIR, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stdout + done.stderr


def test_slots_cut_the_gpus_into_groups():
    assert plan_slots(["0", "1", "2", "3"], 2, None) == ["0,1", "2,3"]
    assert plan_slots(["0", "1", "2", "3"], 1, 3) == ["0", "1", "2"]
    assert plan_slots(["GPU-aa", "GPU-bb", "GPU-cc"], 2, None) == ["GPU-aa,GPU-bb"]
    assert plan_slots([], 1, None) == [None]
    assert plan_slots([], 1, 3) == [None, None, None]


@pytest.mark.parametrize(("gpus", "per_job", "parallel", "message"), [
    (["0", "1"], 3, None, "hydra.launcher.gpus_per_job=3: more than the 2 GPU(s) ['0', '1']; allowed: 1..2"),
    (["0"], 0, None, "hydra.launcher.gpus_per_job=0: must be an integer >= 1"),
    ([], 1, 0, "hydra.launcher.max_parallel=0: must be null or an integer >= 1"),
    (["0", "0"], 1, None, "hydra.launcher.gpus=['0', '0']: lists a GPU twice"),
])
def test_bad_launcher_settings_name_the_key(gpus, per_job, parallel, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        plan_slots(gpus, per_job, parallel)


@pytest.mark.parametrize(("env", "expected"), [("2,3", ["2", "3"]), ("", []), ("0,-1,2", ["0"]), ("GPU-x", ["GPU-x"])])
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, env, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == expected


def test_without_gpus_per_job_each_job_gets_one_gpu_per_ddp_rank(tmp_path):
    jobs = [["name=a", "+trainer.devices=2"], ["name=b", "+trainer.devices=2"]]
    returns = launch(tmp_path, ["hydra.launcher.gpus=[0,1,2,3]"], jobs)
    assert all(r.status == JobStatus.COMPLETED for r in returns)
    assert {marker(tmp_path, name)["cuda_visible_devices"] for name in "ab"} == {"0,1", "2,3"}
