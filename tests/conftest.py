"""Shared fixtures: run the real command line in a subprocess, on CPU, with results under tmp."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A tiny cell: pico on the embedded shapes task, a few steps on the CPU.
TINY = ["model=pico", "task=shapes", "trainer=cpu", "logger=none", "trainer.max_steps=3", "trainer.batch_size=8",
        "task.train_size=80", "task.val_size=40", "trainer.warmup_epochs=0"]


# torch's cache of compiled extensions (the CPU selective scan): a job run with another HOME keeps
# using it instead of compiling the kernel again (~45 s)
_EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_", "HYDRA_"))}
    env.update(PYTHONUNBUFFERED="1", ABLATE_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               TORCH_EXTENSIONS_DIR=_EXTENSIONS_DIR, **extra)
    return env


def run_cli(args: list[str], tmp: Path, env: dict[str, str] | None = None, timeout: int = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """`python run.py ARGS paths.results=tmp/results paths.data=tmp/data` in a clean environment."""
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"paths.results={tmp / 'results'}", f"paths.data={tmp / 'data'}"]
    proc = subprocess.run(cmd, cwd=tmp, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def load_records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/result.json"))]


@pytest.fixture
def tiny_args() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module: on two contended cores it is many times faster than two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def children(pid: int, marker: bytes) -> list[int]:
    """Processes whose parent is `pid` and whose command line contains `marker`."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and marker in cmdline:
            out.append(int(entry.name))
    return out


def kill_mid_run(cmd: list[str], cwd: Path, ready, victims, deadline_s: int = 300, sig: int = 9) -> tuple[int, str]:
    """Run `cmd`; once `ready()` holds, send `sig` (SIGKILL) to the processes `victims(pid of cmd)` names
    (all of them, or the last one). Returns the command's exit code and output; kills it if the test fails.
    The output goes to a file, not a pipe: a pipe nobody reads while we poll would fill and block
    a chatty command."""
    import signal
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        with reaped(proc):
            end = time.monotonic() + deadline_s
            while not ready():
                assert proc.poll() is None and time.monotonic() < end, "the command ended or hung before it was ready"
                time.sleep(0.05)
            for pid in victims(proc.pid):
                os.kill(pid, sig)
            proc.wait(timeout=deadline_s)
        out.seek(0)
        return proc.returncode, out.read()


@contextlib.contextmanager
def reaped(*procs) -> Iterator[None]:
    """Processes started for the block (subprocess.Popen or multiprocessing.Process): any still
    running when it ends, a failed assertion or a time-out included, are killed and reaped."""
    try:
        yield
    finally:
        for proc in procs:
            if isinstance(proc, subprocess.Popen):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)
            elif proc.pid is not None and proc.exitcode is None:
                proc.kill()
                proc.join(timeout=30)


@pytest.fixture
def reap():
    """`reap(proc)` registers a process the test starts (Popen or multiprocessing.Process) and
    returns it; whatever is still running at teardown is killed and reaped."""
    with contextlib.ExitStack() as stack:
        def register(proc):
            stack.enter_context(reaped(proc))
            return proc
        yield register


def logged_step(results: Path, step: int):
    """A `ready` predicate: some cell's train.log has logged training step `step`."""
    return lambda: any(f" step {step}/" in log.read_text() for log in results.glob("runs/*/train.log"))
