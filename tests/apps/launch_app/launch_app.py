"""A tiny Hydra app for the launcher and Slurm tests: it reports where and how it ran.

Every job writes ``<out>/<name>.start.json`` (pid, CUDA_VISIBLE_DEVICES, thread settings, how many
jobs were running when it started), prints one line to stdout and one to stderr, then does its
``action``:

    ok      stay running ``hold_s`` seconds (waiting for ``peer`` first if given), then finish
    failed  finish normally, returning a dict whose status is "failed" (as ablate's job does for a
            cell that failed)
    raise   raise ValueError          exit   os._exit(1)          kill   SIGKILL itself
    count   count to ``steps``, one step per ``step_s`` seconds, checkpointing the counter with
            ablate.train.checkpoint after every step and honouring ablate.train.preemption: a
            requeued job resumes from its checkpoint. Each attempt appends the step it started from
            to ``<out>/<name>.attempts``.

A job that finishes writes ``<out>/<name>.end.json`` and returns a dict.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig


def task(cfg: DictConfig) -> dict:
    out = Path(cfg.out)
    running = out / "running"
    running.mkdir(parents=True, exist_ok=True)
    (running / cfg.name).touch()
    _write(out / f"{cfg.name}.start.json", {
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ablate_num_threads": os.environ.get("ABLATE_NUM_THREADS"),
        "cores": len(os.sched_getaffinity(0)),
        "running_at_start": len(list(running.iterdir())),
        "slurm_job": _slurm_job(),
        "cwd": os.getcwd(),
        "argv": sys.argv,
    })
    print(f"stdout of {cfg.name}", flush=True)
    print(f"stderr of {cfg.name}", file=sys.stderr, flush=True)
    saw_peer = _wait_for(out / f"{cfg.peer}.start.json") if cfg.peer else None
    result = _act(cfg, out)
    (running / cfg.name).unlink()
    _write(out / f"{cfg.name}.end.json", {"saw_peer": saw_peer, **result})
    return {"name": cfg.name, **result}


def _act(cfg: DictConfig, out: Path) -> dict:
    if cfg.action == "ok":
        time.sleep(cfg.hold_s)
        return {}
    if cfg.action == "count":
        return _count(cfg, out)
    if cfg.action == "failed":
        return {"status": "failed"}
    (out / "running" / cfg.name).unlink()
    if cfg.action == "raise":
        raise ValueError(f"job {cfg.name} raised on purpose")
    if cfg.action == "exit":
        os._exit(1)
    if cfg.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(f"action={cfg.action!r}: allowed ok, failed, raise, exit, kill, count")


def _count(cfg: DictConfig, out: Path) -> dict:
    from ablate.train import checkpoint, preemption

    preemption.install()
    path = out / f"{cfg.name}.ckpt.pt"
    state = checkpoint.load(path) or {"step": 0}
    with open(out / f"{cfg.name}.attempts", "a") as attempts:
        attempts.write(f"{state['step']}\n")
    while state["step"] < cfg.steps:
        time.sleep(cfg.step_s)
        state["step"] += 1
        checkpoint.save(path, state)
        if preemption.requested():
            with open(out / f"{cfg.name}.preempted", "a") as preempted:
                preempted.write(f"{state['step']}\n")
            preemption.proceed()
    attempts = [int(line) for line in (out / f"{cfg.name}.attempts").read_text().split()]
    return {"step": state["step"], "attempts": attempts}


def _slurm_job() -> str | None:
    """This job's Slurm id as scancel/scontrol take it: "<array id>_<task>" for an array task.

    (The raw SLURM_JOB_ID of one array task can equal the array's id, which names every task.)
    """
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _wait_for(path: Path, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    return task(cfg)


if __name__ == "__main__":
    main()
