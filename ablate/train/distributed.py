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
import time
import uuid
import warnings
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
log = logging.getLogger("ablate.train")
# How long a rank whose collective timed out waits for the other ranks to say so too, before it
# names the ranks that never joined (the hung ones) and fails.
_TIMEOUT_TALLY_S = 5.0


class RankFailed(RuntimeError):
    """A rank of a multi-device job raised or died; the message names the rank and its error."""


def run_ranks(world: int, timeout: dt.timedelta, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in `world` local ranks (spawned processes, so fn and args must pickle); rank 0's result.

    A collective that waits longer than `timeout` for a peer (`trainer.dist_timeout_min`: a rank
    that hangs, not one that died, which the agent sees at once) fails its rank, naming the ranks
    that never joined it; the agent then stops the others, and RankFailed carries the first error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)  # the agent's own chatter
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn")
    try:
        return elastic_launch(config, _rank_main)(timeout, fn, *args)[0]
    except ChildFailedError as exc:
        reasons = {rank: _reason(failure) for rank, failure in exc.failures.items()}
        # The cause, not its echo: a rank that lost its peer's connection failed because that peer did.
        # Then the first to fail (timestamps are whole seconds), then the lowest rank.
        rank, failure = min(exc.failures.items(), key=lambda item: (
            "by peer" in reasons[item[0]], item[1].timestamp, item[0]))
        reason = reasons[rank]
        how = f"exit code {failure.exitcode}" + (f" ({signal.Signals(-failure.exitcode).name})"
                                                  if failure.exitcode < 0 else "")
        first = reason.strip().splitlines()[0] if reason and reason.strip() else how
        raise RankFailed(f"rank {rank} of {world} failed: {first}") from None


def _reason(failure: Any) -> str:
    """A failed rank's "Type: message" (torch gives a str, or a dict with the message and its stack)."""
    message = failure.message
    return str(message.get("message", message)) if isinstance(message, dict) else str(message)


def _rank_main(timeout: dt.timedelta, fn: Callable[..., T], *args: Any) -> T:
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_in_group)(timeout, fn, *args)  # record: the rank's exception reaches the driver's error


def _in_group(timeout: dt.timedelta, fn: Callable[..., T], *args: Any) -> T:
    _die_with_parent()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # DDP's buckets are contiguous; the depthwise convs' grads arrive channels-last: a copy, not an error
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    # On an error the group is left open: its connections close when this process exits, after its
    # error is on file, so that the agent sees this rank fail before its peers' "closed by peer".
    try:
        result = fn(*args)
    except Exception as exc:
        if not _timed_out(exc):
            raise
        hung = _ranks_that_never_timed_out()
        who = (f"rank{'s' if len(hung) > 1 else ''} {', '.join(map(str, hung))} never joined it (hung, or far "
               f"slower than the others)") if hung else "every rank was waiting"
        raise CollectiveTimeout(f"a collective timed out after {timeout.total_seconds() / 60:g} min "
                                f"(trainer.dist_timeout_min): {who}") from exc
    dist.destroy_process_group()
    return result


class CollectiveTimeout(RuntimeError):
    """A collective waited trainer.dist_timeout_min for a peer rank; the message names the ranks that never came."""


def _timed_out(exc: BaseException) -> bool:
    """True for a collective's time-out (gloo raises it as a RuntimeError that says so)."""
    return isinstance(exc, RuntimeError) and "timed out" in str(exc).lower()


def _ranks_that_never_timed_out() -> list[int]:
    """Every rank whose collective times out says so in the rendezvous store, then waits a few
    seconds for the others to say so too; the ranks that never do were not waiting: they hung."""
    rank, world = rank_and_world()
    store = dist.PrefixStore("ablate/timed_out", dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=dt.timedelta(seconds=_TIMEOUT_TALLY_S)))
    store.set(str(rank), "1")
    deadline = time.monotonic() + _TIMEOUT_TALLY_S
    while True:
        silent = [other for other in range(world) if not store.check([str(other)])]
        if not silent or time.monotonic() > deadline:
            return silent
        time.sleep(0.2)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the agent (the job process) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: a killed job's ranks end at their next collective (trainer.dist_timeout_min)


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

