"""``hydra/launcher=local``: run a sweep's jobs on this machine's GPUs, a fresh process per job.

Each job runs in its own Python interpreter (started with exec, never forked), so the launcher can
give it its own ``CUDA_VISIBLE_DEVICES`` before torch initialises CUDA. The GPUs are cut into slots
of ``gpus_per_job``; as many jobs run at once as there are slots. Without GPUs, ``max_parallel``
CPU jobs (default 1) run at once, sharing the cores: ``OMP_NUM_THREADS`` and ``ABLATE_NUM_THREADS``
(read by the training loop) hold each job's share.

A job that raises, exits or dies by a signal does not stop the others: every job comes back to
Hydra as a ``JobReturn``, FAILED with the error (or with how the process died) for the bad ones.
Each job's stdout and stderr go to ``stdout.log`` / ``stderr.log`` in its Hydra job folder.

What a job process unpickles (its payload) and what the launcher unpickles back (its outcome) are
pickles, which run code when loaded: they live in a private temp folder (mode 0700, outside the
results folder, so nobody else can plant one there) that is removed when the sweep ends.

    python run.py -m hydra/launcher=local model.ssm=true,false            # all visible GPUs, 1 per job
    python run.py -m hydra/launcher=local trainer.devices=2               # 2 GPUs per job, one per DDP rank
    python run.py -m hydra/launcher=local hydra.launcher.gpus=[0,1,2,3] hydra.launcher.gpus_per_job=2
    python run.py -m hydra/launcher=local hydra.launcher.max_parallel=2   # CPU-only machine
"""
# No `from __future__ import annotations` here: Hydra's plugin scan executes this module before
# registering it in sys.modules, and dataclasses then cannot resolve string annotations.
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.ablate_launcher._common import failed_return, upstream_jobs

log = logging.getLogger(__name__)

# Files the launcher keeps in each job folder.
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
# Files of each job in the launcher's private temp folder (<tmp>/<job idx>/).
PAYLOAD_FILE = "job.pkl"
RESULT_FILE = "return.pkl"
_POLL_S = 0.1
_TERMINATE_GRACE_S = 20


@dataclass
class LocalLauncherConf:
    _target_: str = "hydra_plugins.ablate_launcher.local_launcher.GpuPoolLauncher"
    # GPU ids as CUDA_VISIBLE_DEVICES entries; null: every visible GPU; []: CPU jobs only.
    gpus: Optional[List[str]] = None
    # null: the jobs' trainer.devices (their largest), so a DDP job gets one GPU per rank
    gpus_per_job: Optional[int] = None
    # CPU mode: jobs at once (null: 1). GPU mode: at most this many GPU slots (null: all).
    max_parallel: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="local", node=LocalLauncherConf, provider="ablate")


class JobProcessDied(RuntimeError):
    """A job's process ended without reporting a result (crash, os._exit, killed by a signal)."""


@dataclass
class _Job:
    idx: int
    overrides: List[str]
    config: DictConfig
    folder: Path  # the Hydra job folder: logs
    private: Path  # in the launcher's 0700 temp folder: payload and outcome pickles


class GpuPoolLauncher(Launcher):
    def __init__(self, gpus: Optional[Sequence[Any]] = None, gpus_per_job: Optional[int] = None,
                 max_parallel: Optional[int] = None) -> None:
        self.gpus = None if gpus is None else [str(gpu) for gpu in gpus]
        self.gpus_per_job = gpus_per_job
        self.max_parallel = max_parallel
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        gpus = visible_gpus() if self.gpus is None else self.gpus
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="ablate-launcher-"))  # mode 0700
        try:
            jobs = [self._prepare(initial_job_idx + n, overrides, private) for n, overrides in enumerate(job_overrides)]
            per_job = self.gpus_per_job if self.gpus_per_job is not None else max(int(OmegaConf.select(job.config, "trainer.devices") or 1) for job in jobs)
            slots = plan_slots(gpus, per_job, self.max_parallel)
            threads = max(1, available_cores() // len(slots))
            mode = f"GPU slots {slots}" if gpus else f"{len(slots)} CPU job(s) at once"
            log.info(f"Launching {len(job_overrides)} jobs locally: {mode}, {threads} thread(s) per job")
            return _run_pool(jobs, slots, threads, upstream_jobs([job.idx for job in jobs], [job.config for job in jobs]))
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _prepare(self, idx: int, overrides: Sequence[str], private: Path) -> _Job:
        """Compose the job's config, fix its folder, and write what the job process unpickles."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        folder = _resolve_job_folder(config)
        # The job process resolves its folder from these two keys: pin them to what the launcher
        # resolved so logs, payload and Hydra's own files share one folder.
        with read_write(config.hydra.sweep):
            config.hydra.sweep.dir = str(folder.parent)
            config.hydra.sweep.subdir = folder.name
        folder.mkdir(parents=True, exist_ok=True)
        job_private = private / str(idx)
        job_private.mkdir()
        body = cloudpickle.dumps((self.hydra_context, self.task_function, config, Singleton.get_state()))
        with open(job_private / PAYLOAD_FILE, "wb") as handle:
            pickle.dump((list(sys.path), body), handle)
        return _Job(idx, list(overrides), config, folder, job_private)


def visible_gpus() -> List[str]:
    """GPU ids this process may use, found without initialising CUDA here.

    ``CUDA_VISIBLE_DEVICES`` when set (as CUDA reads it: up to the first negative entry), else one
    id per GPU that ``nvidia-smi -L`` lists; none when neither says there is a GPU.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids: List[str] = []
        for entry in (part.strip() for part in env.split(",")):
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        log.info("No nvidia-smi on PATH: running CPU jobs (set hydra.launcher.gpus to name GPUs)")
        return []
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        log.warning(f"nvidia-smi -L failed ({listing.stderr.strip()}): running CPU jobs")
        return []
    count = sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)]


class LaunchSettingError(CompactHydraException, ValueError):
    """A launcher setting outside what is allowed; Hydra prints a CompactHydraException as its message alone."""


def plan_slots(gpus: Sequence[str], gpus_per_job: int, max_parallel: Optional[int]) -> List[Optional[str]]:
    """The CUDA_VISIBLE_DEVICES value of each parallel slot; None for a CPU slot."""
    if not isinstance(gpus_per_job, int) or gpus_per_job < 1:
        raise LaunchSettingError(f"hydra.launcher.gpus_per_job={gpus_per_job!r}: must be an integer >= 1")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise LaunchSettingError(f"hydra.launcher.max_parallel={max_parallel!r}: must be null or an integer >= 1")
    if len(set(gpus)) != len(gpus):
        raise LaunchSettingError(f"hydra.launcher.gpus={list(gpus)}: lists a GPU twice; each id may appear once")
    if not gpus:
        return [None] * (max_parallel or 1)
    count = len(gpus) // gpus_per_job
    if count == 0:
        raise LaunchSettingError(
            f"hydra.launcher.gpus_per_job={gpus_per_job}: more than the {len(gpus)} GPU(s) {list(gpus)}; "
            f"allowed: 1..{len(gpus)}"
        )
    if len(gpus) % gpus_per_job:
        log.warning(f"GPUs {list(gpus[count * gpus_per_job:])} stay idle: {len(gpus)} is not a multiple of gpus_per_job={gpus_per_job}")
    if max_parallel is not None:
        count = min(count, max_parallel)
    return [",".join(gpus[n * gpus_per_job:(n + 1) * gpus_per_job]) for n in range(count)]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _resolve_job_folder(config: DictConfig) -> Path:
    """The job folder, resolved as Hydra's run_job does (with HydraConfig set to this job)."""
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(config)
    try:
        folder = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(OmegaConf.select(config, "hydra.sweep.subdir"))
    finally:
        hydra_config.cfg = previous
    return folder.absolute()


def _child_env(slot: Optional[str], threads: int) -> dict:
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    env["OMP_NUM_THREADS"] = str(threads)
    env["ABLATE_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"  # job logs are readable while the job runs
    return env


def _start(job: _Job, slot: Optional[str], threads: int) -> subprocess.Popen:
    where = f"GPU(s) {slot}" if slot is not None else "CPU"
    log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))} ({where})")
    command = [sys.executable, "-m", "hydra_plugins.ablate_launcher._worker",
               str(job.private / PAYLOAD_FILE), str(job.private / RESULT_FILE)]
    with open(job.folder / STDOUT_FILE, "ab") as out, open(job.folder / STDERR_FILE, "ab") as err:
        return subprocess.Popen(command, env=_child_env(slot, threads), stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)


def _run_pool(jobs: List[_Job], slots: List[Optional[str]], threads: int,
              waits_for: Optional[Dict[int, List[int]]] = None) -> List[JobReturn]:
    """Run the jobs, at most one per slot at a time, each after the jobs it waits for (`waits_for`,
    by idx) have ended, however they ended; return their outcomes in job order."""
    waits_for = waits_for or {}
    pending = list(jobs)
    free = list(slots)
    running: dict = {}  # Popen -> (job, slot)
    returns: dict = {}
    try:
        while pending or running:
            while free and (ready := next((job for job in pending if all(
                    up in returns for up in waits_for.get(job.idx, ()))), None)) is not None:
                pending.remove(ready)
                slot = free.pop(0)
                running[_start(ready, slot, threads)] = (ready, slot)
            done = [process for process in running if process.poll() is not None]
            if not done:
                time.sleep(_POLL_S)
            for process in done:
                job, slot = running.pop(process)
                free.append(slot)
                returns[job.idx] = _collect(job, process.returncode)
    finally:
        _stop(running)
    return [returns[job.idx] for job in jobs]


def _collect(job: _Job, returncode: int) -> JobReturn:
    """The JobReturn the job process wrote, or a FAILED one saying how the process ended."""
    result = job.private / RESULT_FILE
    if result.exists():
        try:
            with open(result, "rb") as handle:
                ret: JobReturn = pickle.load(handle)
        except Exception as error:  # e.g. the return value's class cannot be imported here
            ret = failed_return(job.overrides, RuntimeError(f"job #{job.idx}: cannot read its outcome {result}: {error!r}"))
    else:
        ret = _died(job, returncode)
    if ret.status == JobStatus.COMPLETED:  # the process ended normally; the cell's record says how it went
        record = ret.return_value if isinstance(ret.return_value, dict) else {}
        state = record.get("status", "completed")
    else:
        state = f"FAILED (see {job.folder / STDERR_FILE})"
    log.info(f"\t#{job.idx} {state}")
    return ret


def _died(job: _Job, returncode: int) -> JobReturn:
    if returncode < 0:
        how = f"was killed by signal {signal.Signals(-returncode).name}"
    else:
        how = f"exited with code {returncode}"
    stderr = job.folder / STDERR_FILE
    tail = stderr.read_text(errors="replace").splitlines()[-20:] if stderr.exists() else []
    message = f"job #{job.idx} {how} without reporting a result ({' '.join(job.overrides)}); stderr: {stderr}"
    if tail:
        message += "\n" + "\n".join(tail)
    return failed_return(job.overrides, JobProcessDied(message))


def _stop(running: dict) -> None:
    """On the way out with jobs still running (Ctrl-C, an error here): stop them, TERM then KILL."""
    for process in running:
        process.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
