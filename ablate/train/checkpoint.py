"""Training checkpoints: atomic writes, safe loads, and the RNG state a bit-exact resume needs.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers (dict, list,
tuple, str, int, float, bool, None), so it loads with ``torch.load(weights_only=True)``: a file
that holds any other pickled object is refused instead of executed. The loop stores in it::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "step": int,
     "epoch": int, "rng": rng_state(), "wandb_run_id": str | None, ...}

``save`` never leaves a torn file (``ablate.atomic.write``: temp file, fsync, rename), so a job
killed at any point -- SIGKILL, node loss, Slurm's time limit -- leaves either the previous
checkpoint or the new one; a full disk fails the save with one ``OSError`` naming ENOSPC and the
path, the previous checkpoint intact. A checkpoint damaged anyway (copied half, truncated by hand)
is moved to ``history/`` by ``load_for_resume`` and the cell restarts instead of failing forever.
"""
from __future__ import annotations

import datetime as dt
import logging
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ablate import atomic

log = logging.getLogger("ablate.train")


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    atomic.write(Path(path), lambda handle: torch.save(state, handle))


class UnusableCheckpoint(ValueError):
    """A checkpoint file that cannot be resumed from: torn, empty, or not a torch.save archive."""


class UnsafeCheckpoint(UnusableCheckpoint, pickle.UnpicklingError):
    """A checkpoint refused by ``weights_only=True``: it holds pickled objects, which could run code."""


def load(path: Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """Load a checkpoint written by ``save``; None when there is none at ``path``.

    Raises ``UnsafeCheckpoint`` (a ``pickle.UnpicklingError``) naming the file when it holds anything
    but tensors and plain containers (``weights_only=True``): a checkpoint is data, never code; and
    ``UnusableCheckpoint`` when the file is torn, empty or not a checkpoint at all.
    """
    path = Path(path)
    if not path.exists():
        return None
    # torch.save always writes a zip archive; a torn or empty file lacks the archive's end record.
    if not zipfile.is_zipfile(path):
        raise UnusableCheckpoint(
            f"checkpoint {path} is not a complete torch.save archive ({path.stat().st_size} bytes): torn, empty "
            "or not a checkpoint"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpoint(
            f"refusing to load checkpoint {path}: it holds objects other than tensors and plain "
            f"containers, and checkpoints load with weights_only=True ({_first_line(error)})"
        ) from error
    except (RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:  # a damaged member
        raise UnusableCheckpoint(f"checkpoint {path} cannot be read: {_first_line(error)}") from error
    if not isinstance(state, dict):
        raise UnusableCheckpoint(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def load_for_resume(path: Path, map_location: Any = "cpu",
                    check: Callable[[dict[str, Any]], str | None] | None = None) -> tuple[dict[str, Any] | None, dict | None]:
    """``load``, except that a checkpoint that cannot be resumed from is moved to ``history/`` beside it.

    Returns (state, None), (None, None) when there is no checkpoint, or (None, {"file", "why"}) when it
    was set aside: unreadable, unsafe, or refused by ``check`` (which returns why, e.g. a step beyond
    the plan). A bad checkpoint would otherwise fail every retry of its cell until deleted by hand,
    or worse, end it early as completed; the file is kept (the user may want it), and the cell
    restarts from scratch. An unsafe one is never loaded.
    """
    path = Path(path)
    try:
        state = load(path, map_location)
        refused = check(state) if state is not None and check is not None else None
        why = f"checkpoint {path} {refused}" if refused else None
    except UnusableCheckpoint as error:
        state, why = None, _first_line(error) + ("; NOT loaded (it could run code)"
                                                 if isinstance(error, UnsafeCheckpoint) else "")
    if why is None:
        return state, None
    kept = _set_aside(path)
    log.warning("%s: moved to %s, the cell restarts from step 0", why, kept)
    return None, {"file": str(kept), "why": why}


def _set_aside(path: Path) -> Path:
    history = path.parent / "history"
    history.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    target, n = history / f"{path.stem}-unusable-{stamp}{path.suffix}", 1
    while target.exists():
        n += 1
        target = history / f"{path.stem}-unusable-{stamp}-{n}{path.suffix}"
    shutil.move(str(path), target)
    return target


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


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
