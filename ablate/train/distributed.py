"""DDP inside one job: `trainer.devices=N` trains a cell as N ranks on this machine.

The job process stays the cell's driver (lock, record, wandb run) and starts the ranks with
torch.distributed's elastic agent, in process (`elastic_launch`: what torchrun runs, without
wrapping the command line, so the job's folders and `${now}` are resolved once, by the job). Each
rank joins the process group (NCCL on GPUs, one per rank; gloo on CPU) and runs the function it is
given; the agent runs no restarts (max_restarts=0): when one rank fails it stops the others, and
the job fails the cell with the rank's error. Ranks die with the job process (PR_SET_PDEATHSIG),
so a killed job leaves no rank writing into its cell. A SIGTERM or SIGINT to the job reaches the
ranks through the agent: they stop together at the next step, rank 0 saves it, and the job ends by
that signal, resumable as a one-process job is.

Inside a rank, `fit` splits every global batch of `trainer.batch_size` into equal contiguous
shards (`shard`), DDP averages the gradients (so the update is the global batch's), the logged
loss is the mean over ranks; each rank evaluates its share of the validation split (rank 0
merges them), and only rank 0 writes the checkpoint and the curve.

Under Slurm (`hydra/launcher=slurm trainer.devices=G trainer.nodes=M`) there is no agent: srun starts
M x G tasks, each one process and one rank (`slurm_ranks`: rank, world and the rendezvous address
from Slurm's environment, through submitit's helpers). Rank 0 is the cell's driver; it hosts a TCP
store (`SlurmGroup`) through which it tells the other ranks whether the cell trains (it may be
reused, or fail before training) and, at the end, the record, and through which a failing rank
leaves its error for rank 0's record.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import os
import signal
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
log = logging.getLogger("ablate.train")
# How long a rank whose collective timed out waits for the other ranks to say so too, before it
# names the ranks that never joined (the hung ones) and fails.
_TIMEOUT_TALLY_S = 5.0
# How long rank 0 of a Slurm job waits, at the end, for the other ranks to read the cell's record.
_GOODBYE_S = 30.0


class RankFailed(RuntimeError):
    """A rank of a multi-device job raised or died; the message names the rank and its error."""


def run_ranks(world: int, timeout: dt.timedelta, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in `world` local ranks (spawned processes, so fn and args must pickle); rank 0's result.

    A collective that waits longer than `timeout` for a peer (`trainer.dist_timeout_min`: a rank
    that hangs, not one that died, which the agent sees at once) fails its rank, naming the ranks
    that never joined it; the agent then stops the others, and RankFailed carries the first error."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ablate.train import preemption

    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)  # the agent's own chatter
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn")
    try:
        return elastic_launch(config, _rank_main)(timeout, fn, *args)[0]
    except SignalException as exc:
        # The agent took SIGTERM/SIGINT over and passed it to the ranks, which stopped at one step and
        # saved it (preemption): this process now ends as a one-process job would, by that signal.
        preemption.proceed(exc.sigval)
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
    cuda = _use_local_gpu(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    # On an error the group is left open: its connections close when this process exits, after its
    # error is on file, so that the agent sees this rank fail before its peers' "closed by peer".
    try:
        result = fn(*args)
    except Exception as exc:
        raise explain_timeout(exc, timeout) from exc
    dist.destroy_process_group()
    return result


def _use_local_gpu(local_rank: int) -> bool:
    """Bind this rank to its GPU (when there are GPUs); True when it has one. Slurm may show each task
    all of its node's GPUs (then the local rank picks one) or only its own (then there is one)."""
    # DDP's buckets are contiguous; the depthwise convs' grads arrive channels-last: a copy, not an error
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if not torch.cuda.is_available():
        return False
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return True


def explain_timeout(exc: Exception, timeout: dt.timedelta) -> Exception:
    """A collective's time-out as CollectiveTimeout naming the ranks that never joined it; any other error as is."""
    if not _timed_out(exc):
        return exc
    hung = _ranks_that_never_timed_out()
    who = (f"rank{'s' if len(hung) > 1 else ''} {', '.join(map(str, hung))} never joined it (hung, or far "
           f"slower than the others)") if hung else "every rank was waiting"
    return CollectiveTimeout(f"a collective timed out after {timeout.total_seconds() / 60:g} min "
                             f"(trainer.dist_timeout_min): {who}")


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


@dataclass(frozen=True)
class SlurmRanks:
    """This process's place among the tasks of a Slurm job step (srun starts one process per task)."""
    rank: int
    world: int
    local_rank: int
    nodes: int
    master_addr: str  # the first node of the job: rank 0 runs there
    master_port: int  # derived from the job id (submitit), so every task and a requeued attempt agree


def slurm_ranks() -> Optional[SlurmRanks]:
    """The ranks of this Slurm job when submitit's srun started it as several tasks (a multi-GPU or
    multi-node job of hydra/launcher=slurm), else None (one task; not a submitit job; or not a task
    of an srun step: a batch script of a job of several tasks has SLURM_PROCID=0 too, but no step).
    Also exports MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK, as torch.distributed
    expects them."""
    step_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "SLURM_PROCID" not in os.environ or step_tasks <= 1:
        return None
    from submitit.helpers import TorchDistributedEnvironment

    # overwrite: a MASTER_ADDR that sbatch copied from the submitting shell is not this job's
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if env.world_size != step_tasks:  # submitit's world is the job's task count
        raise RuntimeError(f"srun started {step_tasks} tasks of a job of {env.world_size} (SLURM_NTASKS): a DDP "
                           f"job's ranks are all its tasks; run it through hydra/launcher=slurm")
    return SlurmRanks(rank=env.rank, world=env.world_size, local_rank=env.local_rank,
                      nodes=env.world_size // env.local_world_size, master_addr=env.master_addr,
                      master_port=env.master_port)


class SlurmGroup:
    """The ranks of one Slurm job of several tasks, around the cell that rank 0 drives.

    Rank 0 hosts a TCP store at MASTER_ADDR:MASTER_PORT; the others connect to it and wait for its
    `plan` (train, or not: the cell was reused or failed before training); to train, they join one
    process group with it. At the end every rank returns the `record` rank 0 leaves there. A rank
    that fails leaves its error there for rank 0's record.
    The store lives in rank 0's process: when rank 0 dies, every wait on it ends with an error.
    """

    # How long a rank waits for rank 0's plan or record: rank 0 may be generating a dataset or
    # evaluating; Slurm's time limit bounds it, and rank 0's death ends the wait at once.
    LONG_WAIT = dt.timedelta(days=7)

    def __init__(self, ranks: SlurmRanks, timeout: dt.timedelta) -> None:
        self.ranks, self.timeout = ranks, timeout
        self.store = dist.TCPStore(ranks.master_addr, ranks.master_port, ranks.world, is_master=ranks.rank == 0,
                                   timeout=timeout, wait_for_workers=False)
        self.published = False

    def publish_plan(self, train: bool, run_dir: Optional[str] = None, task_args: Optional[dict] = None) -> None:
        """Rank 0: whether the others train (the cell's folder, the task's extra arguments) or not."""
        self.store.set("plan", json.dumps({"train": train, "run_dir": run_dir, "task_args": task_args or {}}))
        self.published = True

    def plan(self) -> dict:
        self.store.wait(["plan"], self.LONG_WAIT)
        return json.loads(self.store.get("plan"))

    def publish_record(self, record: dict) -> None:
        """Rank 0, last: the cell's record, which every rank's job returns."""
        if not self.published:
            self.publish_plan(False)
        self.store.set("record", json.dumps(record, default=str))
        # The store dies with this process: wait (briefly) until every live rank has read the record.
        deadline = time.monotonic() + _GOODBYE_S
        while time.monotonic() < deadline and not all(
                self.store.check([f"read/{rank}"]) or self.store.check([f"error/{rank}"])
                for rank in range(1, self.ranks.world)):
            time.sleep(0.1)

    def record(self) -> dict:
        self.store.wait(["record"], self.LONG_WAIT)
        record = json.loads(self.store.get("record"))
        self.store.set(f"read/{self.ranks.rank}", "1")
        return record

    def join(self) -> None:
        """Join the process group of every rank of the job (NCCL on GPUs, gloo on CPU)."""
        cuda = _use_local_gpu(self.ranks.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore("group", self.store),
                                rank=self.ranks.rank, world_size=self.ranks.world, timeout=self.timeout)

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def report_error(self, exc: BaseException) -> None:
        """A failing rank (not 0): its "Type: message", for rank 0's record."""
        self.store.set(f"error/{self.ranks.rank}", f"{type(exc).__name__}: {exc}")

    def failed_rank(self, exc: Exception, wait_s: float = _TIMEOUT_TALLY_S) -> Exception:
        """Rank 0's error for an exception out of training: RankFailed naming the first rank that left
        its error (rank 0 saw only a lost connection or a time-out), else the exception explained."""
        deadline = time.monotonic() + wait_s
        while True:
            failed = [rank for rank in range(1, self.ranks.world) if self.store.check([f"error/{rank}"])]
            if failed or not _peer_lost(exc) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if failed:
            message = self.store.get(f"error/{failed[0]}").decode()
            return RankFailed(f"rank {failed[0]} of {self.ranks.world} failed: {message.splitlines()[0]}")
        return explain_timeout(exc, self.timeout)


def _peer_lost(exc: BaseException) -> bool:
    """True for a collective's error that says a peer went away or never came (its own error follows)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("closed", "reset by peer", "timed out", "broken pipe", "connection"))


def max_over_ranks(value: int) -> int:
    """The largest of an int over the ranks (itself outside a process group)."""
    return value if rank_and_world()[1] == 1 else int(_all_reduce(value, torch.int64, dist.ReduceOp.MAX))


def _all_reduce(value: float, dtype: torch.dtype, op: Any) -> float:
    box = torch.tensor([value], dtype=dtype)
    if dist.get_backend() == "nccl":
        box = box.cuda()
    dist.all_reduce(box, op=op)
    return box.item()


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def outlive_rank0() -> None:
    """Block until rank 0's process has ended (a collective it never joins fails then), or until the
    group's time-out. For a rank other than 0 that must not end before rank 0 has acted: a job step
    whose task ends first may be killed whole (Slurm's KillOnBadExit) before rank 0 requeues it."""
    try:
        dist.barrier()
    except RuntimeError:
        pass


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
    _, world = rank_and_world()
    return value if world == 1 else float(_all_reduce(value, torch.float64, dist.ReduceOp.SUM)) / world


def gather_to_rank0(value: Any) -> Optional[list[Any]]:
    """Every rank's `value` (picklable), in rank order, on rank 0; None on the others ([value] outside a group)."""
    rank, world = rank_and_world()
    if world == 1:
        return [value]
    box: Optional[list[Any]] = [None] * world if rank == 0 else None
    dist.gather_object(value, box, dst=0)
    return box


def from_rank0(values: Sequence[Any]) -> list[Any]:
    """Rank 0's `values` on every rank (picklable objects)."""
    _, world = rank_and_world()
    if world == 1:
        return list(values)
    box = list(values)
    dist.broadcast_object_list(box, src=0)
    return box

