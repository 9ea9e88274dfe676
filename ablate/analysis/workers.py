"""The report's helper processes: two forks of the reporting process, for one report.

On two cores a report spends about as long importing the statistics libraries as reading its
records, and about as long drawing as testing. In workers, the records are read while this process
imports scipy and statsmodels, results.csv is formatted while it tests, and the figures are drawn
while it writes the text.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any, Callable, TypeVar

log = logging.getLogger("ablate.analysis")

COUNT = 2  # beside this process, which analyses and writes meanwhile
Result = TypeVar("Result")


class Workers:
    """Runs functions in worker processes forked when a report starts, and stops them when it ends.

    A fork needs no second import of what this process has loaded, and sees this process as it is
    when the report starts (its modules, its working directory). A process that runs other threads
    is never forked (a lock one of them holds would stay locked in the child), nor one with a single
    core: there each function runs here, in turn, when submitted. The report is the same either way
    (a test compares every file byte for byte).
    """

    def __init__(self) -> None:
        self._pool = _fork()
        self._submitted: list[Future] = []

    def submit(self, function: Callable[..., Result], *args: Any) -> "Future[Result]":
        """A Future of `function(*args)`; its exception, if any, is raised by the Future's result()."""
        if self._pool is None:
            done: Future[Result] = Future()
            try:
                done.set_result(function(*args))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, as a worker's would be
                done.set_exception(exc)
            return done
        future = self._pool.submit(function, *args)
        self._submitted.append(future)
        return future

    def close(self) -> None:
        """Cancel what has not begun, wait for what has, and stop the workers: a report that failed
        writes nothing after it has said so."""
        if self._pool is None:
            return
        for future in self._submitted:
            future.cancel()
        wait(self._submitted)
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _fork() -> ProcessPoolExecutor | None:
    """Two forked workers, or None: run here."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores < 2 or threading.active_count() > 1:
        return None
    try:
        pool = ProcessPoolExecutor(COUNT, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_end_with_parent, initargs=(os.getpid(),))
        pool.submit(int)  # the first submission forks both workers now, before the pool starts its own thread
    except (OSError, NotImplementedError) as exc:  # e.g. no /dev/shm for the pool's semaphores
        log.info("the report runs in this process alone: no worker process (%s)", exc)
        return None
    return pool


def _end_with_parent(parent: int) -> None:
    """In a worker: end when the report's process ends (killed, it would leave its workers waiting for
    work that never comes)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="ablate-parent-watch", daemon=True).start()
