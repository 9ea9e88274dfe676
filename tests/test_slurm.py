"""hydra/launcher=slurm on a real Slurm (scripts/slurm-local.sh up): sweeps, requeue, resume.

The tiny app (tests/apps/launch_app) counts to `steps`, checkpointing its counter every step with
ablate.train.checkpoint and honouring ablate.train.preemption; each attempt appends the step it
started from to `<name>.attempts`, so a requeued job that resumed shows e.g. [0, 5], one that
started over [0, 0].
"""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablate.train import checkpoint

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "tests" / "apps" / "launch_app"
# Sized for the one-node test cluster: no GPUs, 2 CPUs. The time limit is far beyond the tests,
# so Slurm's own time-out warning (USR2, signal_delay_s before it) never fires here.
SLURM = [
    "hydra/launcher=slurm", f"hydra.searchpath=[file://{REPO / 'conf'}]",
    "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=20",
]
# The sweeps are module fixtures, timed as part of the first test that uses them (up to ~8 min).
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(900)]
SLURM_CMD_S = 30  # one scontrol/scancel/sacct call; a controller that does not answer fails the test


def slurm_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A Slurm client command, bounded by SLURM_CMD_S."""
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=SLURM_CMD_S)


def _slurm_reachable() -> str:
    """'' when a Slurm controller answers and its node takes jobs, else why not."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    try:
        ping = slurm_cmd("scontrol", "ping", check=False)
    except subprocess.TimeoutExpired:
        return f"scontrol ping did not answer in {SLURM_CMD_S}s"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        first_line = (ping.stdout + ping.stderr).strip().splitlines()[:1]
        return f"scontrol ping says: {first_line[0] if first_line else 'nothing'}"
    return ""


@pytest.fixture(scope="module", autouse=True)
def slurm():
    why = _slurm_reachable()
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no Slurm is reachable ({why}); run `bash scripts/slurm-local.sh up` first")
    if why:
        pytest.skip(f"no Slurm reachable ({why}); start one with `sudo bash scripts/slurm-local.sh up`")


def start_driver(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start a multirun driver; its output goes to `log` (a file: a pipe left unread would fill up
    and block a chatty driver while the test polls)."""
    with open(log, "w") as out:
        driver = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
    driver.log = log
    return driver


def sweep(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """Start the app's multirun through hydra/launcher=slurm; the driver waits for its jobs."""
    command = [sys.executable, "launch_app.py", "-m", *SLURM, f"out={tmp_path / 'm'}",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return start_driver(command, APP_DIR, tmp_path / "driver.log")


@contextlib.contextmanager
def cleaned_up(driver: subprocess.Popen, sweep_dir: Path):
    """On the way out of a failed test: stop the driver and cancel the sweep's Slurm jobs."""
    try:
        yield
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=SLURM_CMD_S)
            folder = sweep_dir / ".submitit"
            jobs = [p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)] if folder.exists() else []
            for job_id in {job.split("_")[0] for job in jobs}:  # arrays, and jobs submitted one by one
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slurm_cmd("scancel", job_id, check=False)


def finish(driver: subprocess.Popen, timeout_s: float = 120, check: bool = True) -> str:
    """Wait for the driver to end (at most timeout_s); its output."""
    driver.wait(timeout=timeout_s)
    output = driver.log.read_text()
    assert not check or driver.returncode == 0, output
    return output


def array_tasks(sweep_dir: Path) -> list:
    """The sweep's Slurm array tasks as "<array id>_<task>", from submitit's job folders."""
    folder = sweep_dir / ".submitit"
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+_\d+", p.name)) if folder.exists() else []


def marker(tmp_path: Path, name: str, kind: str) -> dict:
    return json.loads((tmp_path / "m" / f"{name}.{kind}.json").read_text())


def wait_until(condition, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def counted_to(tmp_path: Path, name: str, step: int) -> str:
    """Wait until the counting job checkpointed `step`; return its Slurm job id."""
    def reached() -> bool:
        try:
            state = checkpoint.load(tmp_path / "m" / f"{name}.ckpt.pt")
        except (EOFError, RuntimeError):  # written by the job while we read: only a torn *read*
            return False
        return bool(state and state["step"] >= step)
    wait_until(reached, f"{name} to checkpoint step {step}")
    return marker(tmp_path, name, "start")["slurm_job"]


def job_field(job_id: str, field: str) -> str:
    shown = slurm_cmd("scontrol", "show", "job", job_id).stdout
    return re.search(rf"\b{field}=(\S+)", shown).group(1)


def held_after_requeue(job_id: str) -> bool:
    return job_field(job_id, "JobState") == "PENDING" and job_field(job_id, "Reason") == "BeginTime"


def release(job_id: str) -> None:
    """Let a requeued job start now. Slurm holds a requeued batch job for about two minutes before
    it may start again; that cool-down is Slurm's, not ours, so the tests lift it."""
    slurm_cmd("scontrol", "update", f"jobid={job_id}", "StartTime=now")


def preempt(job_id: str) -> None:
    """Send the job what Slurm sends a job it preempts or is about to time out: submitit's USR2.

    scancel retries for minutes when the job is mid-transition ("Job can not be altered now"), which
    it is once its handler requeues it; the signal is delivered by then, so a few seconds will do.
    """
    try:
        subprocess.run(["scancel", "--signal=USR2", job_id], timeout=10, capture_output=True)
    except subprocess.TimeoutExpired:
        pass


def attempts(tmp_path: Path, name: str) -> list:
    return [int(line) for line in (tmp_path / "m" / f"{name}.attempts").read_text().split()]


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory):
    """One 2-job sweep of counting jobs; once both have checkpointed step 3, job `c` gets the
    preemption signal and job `d` is requeued by `scontrol requeue`. Both run at once, so the
    file pays for two job start-ups (torch imports) rather than four."""
    tmp_path = tmp_path_factory.mktemp("slurm")
    driver = sweep(tmp_path, "name=c,d", "action=count", "steps=16", "step_s=0.4")
    with cleaned_up(driver, tmp_path / "sweep"):
        jobs = {name: counted_to(tmp_path, name, 3) for name in ("c", "d")}
        preempt(jobs["c"])
        # No warning signal: Slurm stops the job (SIGTERM, then SIGKILL after KillWait) and requeues it.
        slurm_cmd("scontrol", "requeue", jobs["d"])
        for job_id in jobs.values():
            wait_until(lambda: held_after_requeue(job_id), f"job {job_id} to be requeued")
            release(job_id)
        finish(driver)
    return tmp_path, jobs


def test_sweep_of_two_jobs_completes_on_slurm(interrupted_sweep):
    tmp_path, jobs = interrupted_sweep
    assert jobs["c"] != jobs["d"]
    for name in ("c", "d"):
        assert marker(tmp_path, name, "end")["step"] == 16
        # slurm.yaml's setup line gives each job its cpus_per_task as thread count.
        assert marker(tmp_path, name, "start")["ablate_num_threads"] == "1"


def test_preempted_job_checkpoints_requeues_and_resumes(interrupted_sweep):
    tmp_path, jobs = interrupted_sweep
    saved_at = int((tmp_path / "m" / "c.preempted").read_text())
    assert saved_at >= 3
    assert attempts(tmp_path, "c") == [0, saved_at]  # resumed exactly where it was stopped
    assert int(job_field(jobs["c"], "Restarts")) == 1


def test_job_requeued_by_scontrol_resumes_from_its_checkpoint(interrupted_sweep):
    tmp_path, jobs = interrupted_sweep
    first, resumed = attempts(tmp_path, "d")
    assert first == 0 and resumed >= 3
    # SIGTERM reached the loop, which saved before exiting; the new attempt starts from that save.
    assert int((tmp_path / "m" / "d.preempted").read_text()) == resumed
    assert int(job_field(jobs["d"], "Restarts")) == 1


def test_a_job_that_dies_does_not_stop_the_sweep_waiting_for_the_others(tmp_path):
    # Each job does what it is named: job 0 dies at once (os._exit, no result), job 1 runs on.
    driver = sweep(tmp_path, "name=exit,ok", "action=${name}", "hold_s=20")
    with cleaned_up(driver, tmp_path / "sweep"):
        output = finish(driver, check=False)
    assert driver.returncode != 0  # Hydra raises the failed job's error once the sweep is over
    assert re.search(r"job \S+ \(.*name=exit.*\) ended without a result", output)
    assert marker(tmp_path, "ok", "end") == {"saw_peer": None}  # waited for, not abandoned
    assert not (tmp_path / "m" / "exit.end.json").exists()


# --- the real job runner (run.py) on Slurm ----------------------------------------------------

# Enough steps that a job is still training for a few seconds after its first checkpoint: the
# driver polls every 0.5 s, and with the compiled scan 8 steps of pico were over before a signal came.
RUN_STEPS = 40
RUN_CELL = ["task=shapes", "model=pico", "trainer=cpu", "logger=none", f"trainer.max_steps={RUN_STEPS}",
            "trainer.checkpoint_every=1", "trainer.log_every=1"]


def records(results: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/result.json"))]


def cell_of(task: str) -> str | None:
    """The run_id of the cell an array task runs, from its log line "cell <run_id>: ..."."""
    log = Path(job_field(task, "StdOut").replace("%t", "0"))
    found = re.search(r"cell ([0-9a-f]{16}): ", log.read_text()) if log.exists() else None
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """A 2x2 sweep of run.py (model.ssm x seed) on Slurm. The first job to have a checkpoint gets
    the preemption signal mid-run; it saves, is requeued and resumes."""
    tmp_path = tmp_path_factory.mktemp("real")
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "run.py"), "-m", *SLURM, "hydra.launcher.mem_gb=2", *RUN_CELL,
               "model.ssm=true,false", "seed=0,1", "sweep=slurm2x2", f"paths.results={results}",
               f"paths.data={tmp_path / 'data'}"]
    # cwd: the sweep's report lands in tmp_path, not in the repository.
    driver = start_driver(command, tmp_path, tmp_path / "driver.log")
    with cleaned_up(driver, results / "sweeps" / "slurm2x2"):
        preempt_first_checkpointed(driver, results, "slurm2x2")
        return tmp_path, finish(driver, timeout_s=5)


def preempt_first_checkpointed(driver: subprocess.Popen, results: Path, sweep_name: str) -> str | None:
    """While the sweep's driver runs: send the preemption signal to the first running job whose cell
    has a checkpoint (it may finish meanwhile: the tests look at what resumed), and release every
    requeued job from Slurm's hold. Returns the signalled array task."""
    sweep_dir = results / "sweeps" / sweep_name
    signalled = None
    deadline = time.monotonic() + 480
    while driver.poll() is None and time.monotonic() < deadline:
        tasks = array_tasks(sweep_dir)
        for task in tasks if signalled is None else []:
            run_id = cell_of(task) if job_field(task, "JobState") == "RUNNING" else None
            if run_id and (results / "runs" / run_id / "checkpoint.pt").exists():
                preempt(task)
                signalled = task
                break
        for task in filter(held_after_requeue, tasks):
            release(task)
        time.sleep(0.5)
    return signalled


def test_real_2x2_sweep_on_slurm_writes_four_completed_records(real_sweep):
    tmp_path, _ = real_sweep
    done = records(tmp_path / "results")
    assert len(done) == 4
    assert {r["status"] for r in done} == {"completed"}
    assert sorted((r["factors"]["model.ssm"], r["factors"]["seed"]) for r in done) == [
        (False, 0), (False, 1), (True, 0), (True, 1)]
    assert all(r["env"]["slurm_job_id"] for r in done)


def test_real_job_preempted_on_slurm_resumes_and_matches_an_uninterrupted_run(real_sweep):
    tmp_path, _ = real_sweep
    resumed = [r for r in records(tmp_path / "results") if r["cost"]["resumed_from_step"]]
    assert resumed, "no job resumed from a checkpoint"
    cell = resumed[0]
    assert 0 < cell["cost"]["resumed_from_step"] < RUN_STEPS
    overrides = [o for o in cell["overrides"] if not o.startswith(("paths.", "sweep="))]
    reference = tmp_path / "reference"
    # The same cell, uninterrupted, with the thread count the Slurm job had (cpus_per_task=1).
    subprocess.run([sys.executable, str(REPO / "run.py"), *overrides, f"paths.results={reference}",
                    f"paths.data={tmp_path / 'data'}"], cwd=tmp_path, check=True, capture_output=True,
                   env={**os.environ, "ABLATE_NUM_THREADS": "1"}, timeout=300)
    (uninterrupted,) = records(reference)
    assert uninterrupted["run_id"] == cell["run_id"]
    assert uninterrupted["cost"]["resumed_from_step"] is None
    assert cell["metrics"] == pytest.approx(uninterrupted["metrics"], rel=1e-6)


def test_a_chain_on_slurm_waits_on_its_upstream_job_and_skips_the_cells_of_a_failed_one(tmp_path):
    from test_chain import BASE, chain_experiment, check_chain_sweep

    results = tmp_path / "results"
    slurm = [o for o in SLURM if not o.startswith("hydra.searchpath=")]
    searchpath = chain_experiment(tmp_path).replace("=[", f"=[file://{REPO / 'conf'},")
    command = [sys.executable, str(REPO / "run.py"), "-m", *slurm, "hydra.launcher.mem_gb=2", searchpath,
               *BASE, "+experiment=chain", "sweep=slurmchain", f"paths.results={results}",
               f"paths.data={tmp_path / 'data'}"]
    driver = start_driver(command, tmp_path, tmp_path / "driver.log")
    with cleaned_up(driver, results / "sweeps" / "slurmchain"):
        output = finish(driver, timeout_s=600, check=False)
    assert driver.returncode == 1, output  # the failed pretraining
    assert re.search(r"#\d+ submitted as \d+ after \d+_\d+", output), output  # afterok on its array task
    check_chain_sweep(results)



# --- DDP: one Slurm job of several tasks, each task a rank -------------------------------------

DDP_CELL = [*RUN_CELL, "trainer.devices=2", "model.ssm=true"]


def one_process_reference(tmp_path: Path, record: dict, name: str) -> tuple[dict, Path]:
    """The cell of `record` trained by one local process (the thread count of one Slurm task):
    its record and its run folder."""
    overrides = [o for o in record["overrides"] if not o.startswith(("paths.", "sweep=", "trainer.devices="))]
    reference = tmp_path / name
    subprocess.run([sys.executable, str(REPO / "run.py"), *overrides, f"paths.results={reference}",
                    f"paths.data={tmp_path / 'data'}"], cwd=tmp_path, check=True, capture_output=True,
                   env={**os.environ, "ABLATE_NUM_THREADS": "1"}, timeout=300)
    (one,) = records(reference)
    return one, reference / "runs" / one["run_id"]


def assert_same_training(tmp_path: Path, record: dict, name: str) -> None:
    """`record` (2 ranks) ends as one process does: metrics, and every weight, within 1e-5."""
    one, one_dir = one_process_reference(tmp_path, record, name)
    assert one["run_id"] == record["run_id"] and one["cost"]["world_size"] == 1
    assert record["metrics"] == pytest.approx(one["metrics"], rel=1e-5, abs=1e-6)
    ranks = checkpoint.load(tmp_path / "results" / "runs" / record["run_id"] / "checkpoint.pt")["model"]
    alone = checkpoint.load(one_dir / "checkpoint.pt")["model"]
    for key in alone:
        assert (ranks[key].float() - alone[key].float()).abs().max().item() <= 1e-5, key


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory):
    """Two cells (seed 0, 1), each one Slurm job of 2 tasks on the 2-CPU node (gloo); the first job
    to have a checkpoint gets the preemption signal mid-run, is requeued and resumes."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "run.py"), "-m", *SLURM, *DDP_CELL, "seed=0,1", "sweep=slurmddp",
               f"paths.results={results}", f"paths.data={tmp_path / 'data'}"]
    driver = start_driver(command, tmp_path, tmp_path / "driver.log")
    with cleaned_up(driver, results / "sweeps" / "slurmddp"):
        signalled = preempt_first_checkpointed(driver, results, "slurmddp")
        output = finish(driver, timeout_s=5)
    return tmp_path, signalled, output


def test_a_job_of_two_tasks_trains_as_two_ranks_and_matches_one_process(ddp_sweep):
    tmp_path, _, output = ddp_sweep
    done = records(tmp_path / "results")
    assert [(r["status"], r["cost"]["world_size"], r["factors"]["seed"]) for r in done] in (
        [("completed", 2, 0), ("completed", 2, 1)], [("completed", 2, 1), ("completed", 2, 0)])
    uninterrupted = [r for r in done if not r["cost"]["resumed_from_step"]]
    assert uninterrupted, "both cells resumed: no uninterrupted one to compare"
    assert_same_training(tmp_path, uninterrupted[0], "one_process")
    run_dir = tmp_path / "results" / "runs" / uninterrupted[0]["run_id"]
    assert "rank 1" not in (run_dir / "train.log").read_text()  # each rank its own log
    assert (run_dir / "train.rank1.log").exists()


def test_a_job_of_two_tasks_requeued_mid_run_resumes_and_completes(ddp_sweep):
    tmp_path, signalled, _ = ddp_sweep
    assert signalled is not None, "no job was signalled"
    resumed = [r for r in records(tmp_path / "results") if r["cost"]["resumed_from_step"]]
    assert len(resumed) == 1, "the signalled job did not resume from a checkpoint"
    cell = resumed[0]
    assert 0 < cell["cost"]["resumed_from_step"] < RUN_STEPS and cell["cost"]["steps"] == RUN_STEPS
    assert int(job_field(signalled, "Restarts")) == 1
    assert_same_training(tmp_path, cell, "one_process_resumed")


def test_a_rank_that_raises_fails_the_slurm_job_with_that_ranks_message(tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "run.py"), "-m", *SLURM, *DDP_CELL, "trainer.max_steps=8",
               "task._target_=faulty_task.FaultyShapes", "sweep=slurmfault", f"paths.results={results}",
               f"paths.data={tmp_path / 'data'}"]
    env = {**os.environ, "ABLATE_TEST_FAULT": "raise:1:3", "PYTHONPATH": str(REPO / "tests" / "apps" / "faulty")}
    with open(tmp_path / "driver.log", "w") as out:
        driver = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    driver.log = tmp_path / "driver.log"
    with cleaned_up(driver, results / "sweeps" / "slurmfault"):
        output = finish(driver, timeout_s=300, check=False)
    assert driver.returncode == 1, output
    (record,) = records(results)
    assert record["status"] == "failed" and record["error"]["type"] == "RankFailed"
    assert record["error"]["message"] == "rank 1 of 2 failed: RuntimeError: injected failure on rank 1 at step 3"
    rank1_log = (results / "runs" / record["run_id"] / "train.rank1.log").read_text()
    assert "rank 1 failed: RuntimeError: injected failure on rank 1 at step 3" in rank1_log
