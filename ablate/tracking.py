"""Experiment tracking: one wandb run per job, offline under the run folder when there is no API key.

The run id is kept in <run_dir>/wandb_id so that a requeued or resumed job continues the same wandb
run instead of starting a new one; a fresh attempt at a completed cell (+rerun=all) gets a new id.

An online run whose server cannot be reached (a compute node without network, a firewall) goes
offline instead of failing the cell: a TCP connect to the server (REACH_TIMEOUT_S) decides at once,
and wandb's own init timeout (INIT_TIMEOUT_S, 90 s by default) catches a server that accepts but
does not answer. One warning line gives the ``wandb sync`` command that uploads the run later.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from ablate import atomic, secrets

log = logging.getLogger("ablate.tracking")
MODES = ("online", "offline", "disabled")
KINDS = ("wandb", "none")
DEFAULT_BASE_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 5.0
INIT_TIMEOUT_S = 15.0


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_mode(configured: Optional[str]) -> str:
    """logger.mode if set, else WANDB_MODE, else online with an API key and offline without one."""
    mode = configured or os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")
    if mode not in MODES:
        raise ValueError(f"logger.mode={mode!r} (or WANDB_MODE) is not known; choose from: {', '.join(MODES)}")
    return mode


def unreachable(base_url: Optional[str] = None) -> Optional[str]:
    """Why the wandb server cannot be reached, or None if it can.

    ``base_url`` defaults to WANDB_BASE_URL, else api.wandb.ai.
    """
    url = urlsplit(base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        return f"cannot connect to {url.scheme}://{url.hostname}:{port} ({error.strerror or type(error).__name__})"
    return None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class WandbTracker:
    """Thin wrapper so the loop can log without knowing about wandb."""

    def __init__(self, logger_cfg: Mapping[str, Any], run_dir: Path, run_id: str, sweep: str,
                 config: Mapping[str, Any], task_name: str, variant: str, arms: Mapping[str, bool], resume: bool):
        # arms: {switch: on?} of the model family, e.g. {"ssm": True} -> name "...-ssm-...", tag "ssm-on"
        id_file = run_dir / "wandb_id"
        if resume and id_file.is_file():
            self.run_id = id_file.read_text().strip()
        else:
            attempt = len(list(run_dir.glob("wandb_id.*"))) + (1 if id_file.is_file() else 0)
            if id_file.is_file():  # keep the previous attempt's id for the record
                id_file.rename(run_dir / f"wandb_id.{attempt}")
            self.run_id = f"{run_id}-{attempt}"
            atomic.write(id_file, self.run_id)
        self.run = _open_run(
            logger_cfg, group=sweep, job_type=task_name,
            name="-".join([task_name, variant, *(key if on else f"no{key}" for key, on in arms.items()),
                           f"seed{config.get('seed')}", "x".join(map(str, config.get("task", {}).get("image_size") or [])),
                           run_id[:8]]),
            tags=[*(f"{key}-{'on' if on else 'off'}" for key, on in arms.items()), task_name, variant],
            config=flatten(config), dir=str(run_dir), id=self.run_id, resume="allow",
        )

    def log(self, values: Mapping[str, Any], step: int) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, summary: Mapping[str, Any], failed: bool) -> None:
        self.run.summary.update(flatten(summary))
        self.run.finish(exit_code=1 if failed else 0)


def _open_run(logger_cfg: Mapping[str, Any], **init_args: Any) -> Any:
    """wandb.init in logger.mode (resolve_mode), offline instead when an online server cannot be reached
    or does not answer in INIT_TIMEOUT_S; one log line says where the run is."""
    import wandb

    mode = resolve_mode(logger_cfg.get("mode"))
    offline_because = unreachable() if mode == "online" else None
    init = functools.partial(
        wandb.init, project=logger_cfg["project"], entity=logger_cfg.get("entity"), reinit="finish_previous",
        # wandb's metadata holds sys.argv verbatim: leave it out when the command line has a password.
        settings=wandb.Settings(silent=True, console="off", init_timeout=INIT_TIMEOUT_S,  # system metrics on
                                x_disable_meta=secrets.redact_tree(sys.argv) != sys.argv),
        **init_args,
    )
    try:
        run = init(mode="offline" if offline_because else mode)
    except wandb.errors.CommError as error:  # reachable, but no answer within INIT_TIMEOUT_S
        if mode != "online":
            raise
        offline_because = str(error).strip().splitlines()[0]
        wandb.teardown()  # the failed online run still holds its id in wandb's service process
        run = init(mode="offline")
    if offline_because:
        log.warning("wandb: %s; logging offline instead, upload later with: wandb sync %s",
                    offline_because, run.settings.sync_dir)
    elif run.settings.mode == "offline":
        log.info("wandb: offline run %s (no API key); upload it with: wandb sync %s", run.name, run.settings.sync_dir)
    elif run.url:
        log.info("wandb: run %s at %s", run.name, run.url)
    return run


def log_sweep(logger_cfg: Mapping[str, Any], sweep: str, folder: Path, tables: Mapping[str, Any],
              files: Sequence[Path]) -> Optional[str]:
    """One wandb run for the whole sweep, in the group of its cells' runs (job_type "report"): `tables`
    (name -> pandas DataFrame) as wandb Tables, and `files` (the report) saved with it. Its run
    folder goes under `folder`. Returns the run's name (None with logger.kind=none)."""
    if logger_cfg["kind"] == "none":
        return None
    import wandb

    run = _open_run(logger_cfg, group=sweep, job_type="report", name=f"{sweep}-report", tags=["report"],
                    dir=str(folder))
    run.log({name: wandb.Table(dataframe=frame) for name, frame in tables.items()})
    for path in files:  # copied into the run's folder: a file saved from outside it is symlinked, with a warning
        copy = Path(run.dir) / path.name
        shutil.copyfile(path, copy)
        run.save(str(copy), base_path=run.dir, policy="now")
    run.finish()
    return run.name


class Relay:
    """The tracker of a DDP rank in a process of its own (local ranks): what it logs goes through a
    queue to the job process's tracker (`relayed`), which alone holds the wandb run."""

    def __init__(self, queue: Any, run_id: str) -> None:
        self.queue, self.run_id = queue, run_id  # run_id: the wandb id, which checkpoints keep

    def log(self, values: Mapping[str, Any], step: int) -> None:
        self.queue.put((dict(values), step))


@contextlib.contextmanager
def relayed(tracker: Optional[WandbTracker]) -> Iterator[Optional[Relay]]:
    """A Relay to `tracker` for the ranks the block starts (None without a tracker); a thread of
    this process logs what they send until the block ends."""
    if tracker is None:
        yield None
        return
    import multiprocessing

    queue = multiprocessing.get_context("spawn").Queue()  # passed to the spawned ranks as an argument

    def drain() -> None:
        for values, step in iter(queue.get, None):
            tracker.log(values, step)

    thread = threading.Thread(target=drain, name="wandb-relay", daemon=True)
    thread.start()
    try:
        yield Relay(queue, tracker.run_id)
    finally:
        queue.put(None)  # after everything the ranks sent (one queue, one order)
        thread.join()


def start(logger_cfg: Mapping[str, Any], **kwargs: Any) -> Optional[WandbTracker]:
    """A tracker for `logger.kind`, or None for `none`."""
    kind = logger_cfg["kind"]
    if kind == "none":
        return None
    if kind != "wandb":
        raise ValueError(f"logger.kind={kind!r} is not known; choose from: {', '.join(KINDS)}")
    return WandbTracker(logger_cfg, **kwargs)
