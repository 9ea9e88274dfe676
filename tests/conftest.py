"""Shared fixtures: run the real command line in a subprocess, on CPU, with results under tmp."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
