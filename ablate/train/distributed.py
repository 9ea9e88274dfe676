"""DDP inside one job: `trainer.devices=N` trains a cell as N ranks on this machine.

The job process stays the cell's driver (lock, record, wandb run) and starts the ranks with
torch.distributed's elastic agent, in process (`elastic_launch`: what torchrun runs, without
wrapping the command line, so the job's folders and `${now}` are resolved once, by the job). Each
rank joins the process group (NCCL on GPUs, one per rank; gloo on CPU) and runs the function it is
given; the agent runs no restarts (max_restarts=0): when one rank fails it stops the others, and
the job fails the cell with the rank's error. Ranks die with the job process (PR_SET_PDEATHSIG),
so a killed job leaves no rank writing into its cell.

Inside a rank, `fit` splits every global batch of `trainer.batch_size` into equal contiguous
shards (`shard`), DDP averages the gradients (so the update is the global batch's), the logged
loss is the mean over ranks, and only rank 0 evaluates, writes the checkpoint and the curve.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import signal
import uuid
import warnings
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
log = logging.getLogger("ablate.train")
# A collective waits this long for a peer before it raises: a peer that hangs, not one that died
# (the agent stops the group at once when a rank exits). Long, because the other ranks wait in one
# while rank 0 evaluates the whole validation split alone.
COLLECTIVE_TIMEOUT = dt.timedelta(hours=2)


class RankFailed(RuntimeError):
    """A rank of a multi-device job raised or died; the message names the rank and its error."""


def run_ranks(world: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in `world` local ranks (spawned processes, so fn and args must pickle); rank 0's result."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)  # the agent's own chatter
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn")
    try:
        return elastic_launch(config, _rank_main)(fn, *args)[0]
    except ChildFailedError as exc:
        rank, failure = min(exc.failures.items())
        reason = failure.message if isinstance(failure.message, str) else str(failure.message)
        how = f"exit code {failure.exitcode}" + (f" ({signal.Signals(-failure.exitcode).name})"
                                                  if failure.exitcode < 0 else "")
        first = reason.strip().splitlines()[0] if reason and reason.strip() else how
        raise RankFailed(f"rank {rank} of {world} failed: {first}") from None


def _rank_main(fn: Callable[..., T], *args: Any) -> T:
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_in_group)(fn, *args)  # record: the rank's exception reaches the driver's error


def _in_group(fn: Callable[..., T], *args: Any) -> T:
    _die_with_parent()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # DDP's buckets are contiguous; the depthwise convs' grads arrive channels-last: a copy, not an error
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        return fn(*args)
    finally:
        dist.destroy_process_group()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the agent (the job process) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: a killed job's ranks end at their next collective (COLLECTIVE_TIMEOUT)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: Any, rank: int, world: int) -> Any:
    """Rank `rank`'s contiguous 1/world of a batch: every element of a tuple/list batch (tensors or
    per-image lists) cut the same way along its first dimension."""
    def cut(part: Any) -> Any:
        if isinstance(part, (torch.Tensor, list, tuple)) and len(part):
            per = len(part) // world
            return part[rank * per:(rank + 1) * per]
        return part
    return type(batch)(cut(part) for part in batch) if isinstance(batch, (tuple, list)) else cut(batch)


def mean_over_ranks(value: float) -> float:
    """The mean of a float over the ranks (itself outside a process group)."""
    rank, world = rank_and_world()
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        total = total.cuda()
    dist.all_reduce(total)
    return float(total.item()) / world


def from_rank0(values: Sequence[Any]) -> list[Any]:
    """Rank 0's `values` on every rank (picklable objects)."""
    _, world = rank_and_world()
    if world == 1:
        return list(values)
    box = list(values)
    dist.broadcast_object_list(box, src=0)
    return box

