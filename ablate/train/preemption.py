"""Cooperative preemption: the training loop saves a checkpoint before a job is stopped.

Slurm warns a job before stopping it. submitit asks sbatch for its preemption signal (USR2 unless
``SUBMITIT_PREEMPT_SIGNAL`` says otherwise) ``signal_delay_s`` before the time limit, clusters send
it or SIGTERM at preemption, and the kill follows. submitit's own USR2 handler requeues the job at
once (``scontrol requeue`` then exit), which would lose every step since the last periodic
checkpoint. So ``install()`` puts a handler in front of whatever handles USR2 and SIGTERM; it only
records the signal. The loop polls ``requested()`` at every step boundary, saves a checkpoint, then
calls ``proceed()``, which runs the displaced handler: under submitit that is its requeue logic,
with its ``max_num_timeout`` countdown intact; elsewhere it is the default action (the process
ends by that signal), so a non-Slurm run behaves as if nothing were installed, only later.

A second identical signal before the loop reached a step boundary (a long evaluation, a stuck
data loader) runs the displaced handler at once, so ``kill`` twice still stops the process. Inside
``immediate()`` (generating a dataset: no step boundary, nothing to save) the first signal acts at once.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Iterator, NoReturn

import submitit

log = logging.getLogger(__name__)

# For each signal install() took over: the handler it found there (what proceed() hands over to).
_displaced: dict[int, Any] = {}
# The signal the loop has yet to act on (the preemption signal wins over SIGTERM).
_pending: int | None = None
_immediate = False  # inside immediate(): a signal does not wait for a step boundary


def install() -> None:
    """Route the preemption signal and SIGTERM to ``requested()``; call once at job start.

    Idempotent. Signals that are ignored (SIG_IGN) or handled outside Python are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("preemption.install() must run in the main thread (signal handlers can only be set there)")
    for signum in (_preempt_signal(), signal.SIGTERM):
        current = signal.getsignal(signum)
        if current is _on_signal or current in (signal.SIG_IGN, None):
            continue
        _displaced[signum] = current
        signal.signal(signum, _on_signal)


def requested() -> bool:
    """True once a preemption or termination signal arrived: save a checkpoint, then ``proceed()``."""
    return _pending is not None


def pending() -> int:
    """The signal the loop has yet to act on, 0 when none (DDP ranks agree on the largest)."""
    return _pending or 0


def proceed(signum: int | None = None) -> NoReturn:
    """Hand over to the handler ``install()`` displaced for the pending signal; never returns.

    Under submitit that requeues the job (or raises submitit's ``UncompletedJobError`` once the job
    timed out more than ``max_num_timeout`` times) and exits; with no handler of its own the process
    ends by the signal's default action. If the displaced handler returns (submitit only logs
    SIGTERM: the cluster itself kills or requeues the job; and it only logs on a rank other than 0),
    the process exits with 128 + signal. `signum`: the signal a peer DDP rank received, when this
    rank stops with it (its own may not have arrived yet).
    """
    signum = signum or _pending
    if signum is None:
        raise RuntimeError("preemption.proceed() called while no preemption is pending; check requested() first")
    log.warning("preemption: %s received%s, checkpoint saved, handing over", signal.Signals(signum).name,
                "" if _pending else " by a peer rank")
    _run_displaced(signum)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def immediate() -> Iterator[None]:
    """A block with no step boundary to wait for and nothing to save (a dataset being generated): a
    signal inside it hands over at once (submitit: requeue), else ends the job with SystemExit(128 +
    signal), so that `finally` blocks run and a half-built dataset's temporary folder is removed."""
    global _immediate
    previous, _immediate = _immediate, True
    try:
        yield
    finally:
        _immediate = previous


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _immediate:
        _pending = signum
        log.warning("%s received outside the training loop: stopping now", signal.Signals(signum).name)
        handler = _displaced[signum]
        if callable(handler):
            handler(signum, frame)
        raise SystemExit(128 + signum)
    if _pending == signum:
        _run_displaced(signum, frame)  # asked twice: do not wait for the loop any longer
        return
    if _pending is None or signum == _preempt_signal():
        _pending = signum


def _run_displaced(signum: int, frame: FrameType | None = None) -> None:
    handler = _displaced.get(signum, signal.SIG_DFL)
    if callable(handler):
        handler(signum, frame)
        return
    # SIG_DFL: restore it and deliver the signal again, so the process ends the way it would have.
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _preempt_signal() -> int:
    name = f"SIG{submitit.JobEnvironment.USR_SIG}"
    signum = getattr(signal, name, None)
    if signum is None:
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={submitit.JobEnvironment.USR_SIG!r} is not a signal name; use e.g. USR2")
    return signum
