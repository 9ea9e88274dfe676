"""Training checkpoints: atomic writes, safe loads, and the RNG state a bit-exact resume needs.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers (dict, list,
tuple, str, int, float, bool, None), so it loads with ``torch.load(weights_only=True)``: a file
that holds any other pickled object is refused instead of executed. The loop stores in it::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "step": int,
     "epoch": int, "rng": rng_state(), "wandb_run_id": str | None, ...}

``save`` never leaves a torn file: it writes a temp file in the same folder, fsyncs it and renames
it over the old one (``os.replace`` is atomic on POSIX), so a job killed at any point -- SIGKILL,
node loss, Slurm's time limit -- leaves either the previous checkpoint or the new one.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TMP_SUFFIX = ".tmp"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load(path: Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """Load a checkpoint written by ``save``; None when there is none at ``path``.

    Raises ``pickle.UnpicklingError`` naming the file when it holds anything but tensors and plain
    containers (``weights_only=True``): a checkpoint is data, never code.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"refusing to load checkpoint {path}: it holds objects other than tensors and plain "
            f"containers, and checkpoints load with weights_only=True ({_first_line(error)})"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator a training step draws from, as weights_only-safe values."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        # Only a process that used CUDA has CUDA generators worth saving; asking for them would
        # otherwise create a CUDA context (and hold GPU memory) in a CPU job.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by ``rng_state``: the next draws repeat those after the save."""
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda:
        if not torch.cuda.is_available() or torch.cuda.device_count() < len(cuda):
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ValueError(
                f"rng state 'cuda' holds {len(cuda)} CUDA generator(s) but this process sees "
                f"{visible} GPU(s); resume on as many GPUs as the run was started with"
            )
        torch.cuda.set_rng_state_all(cuda)
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _remove_orphans(path: Path) -> None:
    """Delete temp files that a killed writer of ``path`` left behind (its pid is gone).

    A live writer's temp file is left alone: its pid is in the name and still running.
    """
    for tmp in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        pid_text = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
