"""One sweep cell, start to finish: config -> task -> model -> fit -> result record.

    run(cfg)  is what run.py calls for every Hydra job. It never raises for a failing cell: the
    error goes into the record (status failed/diverged/pruned) and the sweep goes on.

Cells are content-addressed: results/runs/<run_id>/ (run_id = hash of the semantic config), so a
re-run of a sweep reuses completed cells, resumes interrupted ones from their checkpoint, and two
sweeps that share a cell compute it once. An fcntl lock on the run folder keeps concurrent jobs of
the same cell from running at once.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import platform
import resource
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import ablate
from ablate import cell, chain, records, secrets, tracking
from ablate.config import ConfigError, validate
from ablate.models import Family, family_of
from ablate.train import preemption
from ablate.train.distributed import SlurmGroup, slurm_ranks
from ablate.train.loop import CURVE_FILE, Curve, fit, resolve_device, seed_everything
from ablate.train.stops import Diverged, Pruned

log = logging.getLogger("ablate.job")


def run(cfg: DictConfig, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """Run one cell; return its record (also written to results/runs/<run_id>/result.json).

    In a Slurm job of several tasks (trainer.devices x trainer.nodes ranks) every task calls this:
    rank 0 runs the cell as one process would, the others train with it (_follow), and every rank
    returns rank 0's record."""
    ranks = slurm_ranks()
    if ranks is None:
        return _run(cfg, overrides, None)
    group = SlurmGroup(ranks, dt.timedelta(minutes=cfg.trainer.dist_timeout_min))
    if ranks.rank:
        return _follow(cfg, group)
    record = _run(cfg, overrides, group)
    group.publish_record(record)
    return record


def _run(cfg: DictConfig, overrides: Optional[list[str]], group: Optional[SlurmGroup]) -> dict[str, Any]:
    started = time.time()
    config_error = _config_error(cfg, group)
    _set_threads()
    preemption.install()
    rerun = cfg.get("rerun")
    # the record's config: the lr written out (unless a bad lr_base_size or batch_size breaks the rule)
    # and the keys the model does not use at their defaults; run_id is its hash
    config, run_id = cell.resolve(cfg, scale_lr=config_error is None)
    # Everything this job writes (cell.json, logs, record, wandb) holds only redacted text; cfg keeps
    # the real values for the code that needs them (e.g. the tuning storage URL).
    overrides = secrets.redact_tree(_hydra_overrides() if overrides is None else overrides)
    config = secrets.redact_tree(config)
    run_dir = Path(cfg.paths.results) / "runs" / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a new cell in a read-only (or full) results folder
        return _unwritable(config, overrides, run_id, exc)
    _write_cell_pointer(run_id, run_dir, overrides)

    with _locked(run_dir) as read_only, _log_to(run_dir / "train.log"):
        previous = _read_previous(run_dir / records.RESULT_FILE)
        if config_error is not None and previous is not None and previous["status"] != records.Status.FAILED:
            # Only a non-semantic key (device, logger, rerun...) can be bad and still name a cell that
            # has a result: that record stays as it is, and this job reports the error without writing one.
            log.error("cell %s not run: %s (its earlier record is kept)", run_id, config_error)
            return {**_new_record(config, overrides, run_id), "error": _error(config_error)}
        stale = records.staleness(previous["env"], records.code_version()[0]) if previous is not None else None
        if previous is not None and previous["status"] == records.Status.COMPLETED and rerun != "all" and not (
                stale and rerun == "stale"):
            log.info("cell %s already completed (%s): reused, not retrained", run_id, run_dir)
            if stale:
                log.warning("cell %s is stale: %s; +rerun=stale recomputes it", run_id, stale)
            return previous
        if read_only is not None:
            return _unwritable(config, overrides, run_id, read_only)
        if previous is not None:  # a stale cell's checkpoint is old code's: it starts afresh too
            _archive(run_dir, previous, fresh_start=rerun == "all" or bool(stale and rerun == "stale"))
        record = _new_record(config, overrides, run_id)
        log.info("cell %s: %s", run_id, " ".join(overrides) or "(defaults)")
        tracker, failed = None, True
        try:
            if config_error is not None:
                raise config_error
            record["init"], task_args = _initial_weights(cfg, config)
            tracker = tracking.start(
                cfg.logger, run_dir=run_dir, run_id=run_id, sweep=cfg.sweep, config=config,
                task_name=cfg.task.name, variant=cfg.model.name, arms=_arms(cfg.model), resume=previous is None,
            )
            task = instantiate(cfg.task, **task_args)  # validates the task's settings (sizes, choices)
            record["task"] = dict(vars(task.info))
            family = family_of(cfg.model.name)
            record["cost"]["seq_len"] = family.seq_len(task.image_size)
            with preemption.immediate():  # generating a dataset: a stop signal need not wait for it
                task.prepare()
            seed_everything(cfg.seed)
            model = task.build_model(cfg.model)  # validates the variant and scan order
            model.to(resolve_device(cfg.trainer.device))  # count on the training device: the scan is slow on CPU
            record["cost"].update(task.cost(model), tau=family.tau(cfg.model.name), **family.cost_facts(model))
            if group is not None:
                result = _fit_with_slurm_ranks(cfg, model, task, run_dir, group, task_args, tracker)
                record["data"] = task.data_summary()
            elif cfg.trainer.devices > 1:
                result, record["data"] = _fit_on_ranks(cfg, model, run_dir, tracker)
            else:
                result = fit(model, task, cfg.trainer, run_dir, cfg.seed, on_eval=_pruning_hook(cfg, task.info.metric),
                             tracker=tracker)
                record["data"] = task.data_summary()
            record["metrics"] = result.metrics
            record["cost"]["world_size"] = cfg.trainer.devices * cfg.trainer.nodes
            record["cost"].update(_throughput(result, task), steps=result.steps, resumed_from_step=result.resumed_from_step)
            record["checkpoint_set_aside"] = result.checkpoint_set_aside
            record["status"], failed = records.Status.COMPLETED, False
        except chain.UpstreamNotCompleted as exc:  # trained from scratch it would be another cell: not run
            record["status"], record["error"] = records.Status.SKIPPED, _error(exc)
            record["init"] = exc.init
        except Diverged as exc:
            record["status"], record["error"] = records.Status.DIVERGED, _error(exc)
        except Pruned as exc:
            record["status"], record["error"] = records.Status.PRUNED, _error(exc)
        except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the sweep
            record["status"], record["error"] = records.Status.FAILED, _error(exc)
            log.error("cell %s failed: %s: %s", run_id, record["error"]["type"], record["error"]["message"])
        record["curve"] = Curve.read(run_dir).summary()
        record["cost"].update(wall_seconds=round(time.time() - started, 3), peak_memory_mb=_peak_memory_mb())
        record["env"]["finished_at"] = _now()
        try:
            records.write_json_atomic(run_dir / records.RESULT_FILE, record)
        except OSError as exc:  # e.g. ENOSPC: the cell is failed (the error names errno and path), the sweep goes on
            log.error("cell %s: its record was not written: %s", run_id, exc)
            record["status"], record["error"] = records.Status.FAILED, record["error"] or _error(exc)  # the first cause
        if tracker is not None:
            tracker.finish({"status": record["status"], "metrics": record["metrics"], "cost": record["cost"],
                            "init": record["init"] or {}}, failed)  # a fine-tuned run names its upstream cell
        if record["status"] == records.Status.COMPLETED:
            log.info("cell %s completed: %s", run_id, record["metrics"])
        elif record["status"] != records.Status.FAILED:  # diverged, pruned or skipped: their only line (a failure was logged above)
            log.info("cell %s %s: %s", run_id, record["status"], record["error"]["message"])
        return record


def _fit_on_ranks(cfg: DictConfig, model: torch.nn.Module, run_dir: Path,
                  tracker: Optional[tracking.WandbTracker]) -> tuple[Any, dict[str, int]]:
    """fit() as cfg.trainer.devices DDP ranks (ablate/train/distributed.py), from this model's initial
    weights; returns rank 0's FitResult and data summary. A rank that diverged or was pruned makes
    the cell diverged or pruned, as in one process; any other failure of a rank raises RankFailed.
    Rank 0's per-step metrics reach this job's tracker through a queue (tracking.relayed)."""
    from ablate.train.distributed import run_ranks

    gpus = torch.cuda.device_count()
    if resolve_device(cfg.trainer.device).type == "cuda" and cfg.trainer.devices > gpus:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices} is not allowed on this machine: at most the "
                          f"{gpus} GPU(s) it has (one rank per GPU)")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    config = OmegaConf.to_container(cfg, resolve=True)  # resolved here: a rank must not resolve ${now} again
    timeout = dt.timedelta(minutes=cfg.trainer.dist_timeout_min)
    with tracking.relayed(tracker) as relay:
        outcome, value = run_ranks(cfg.trainer.devices, timeout, _fit_rank, config, run_dir, state, relay)
    if outcome == "diverged":
        raise Diverged(value)
    if outcome == "pruned":
        raise Pruned(value)
    return value


def _fit_with_slurm_ranks(cfg: DictConfig, model: torch.nn.Module, task: Any, run_dir: Path, group: SlurmGroup,
                          task_args: dict[str, Any], tracker: Any) -> Any:
    """Rank 0 of a Slurm job of several tasks: tell the other ranks to train, then fit() with them
    (DDP broadcasts this model's weights); an error a peer left behind is the cell's error."""
    group.publish_plan(True, run_dir=str(run_dir), task_args=task_args)
    group.join()
    try:
        return fit(model, task, cfg.trainer, run_dir, cfg.seed, on_eval=_pruning_hook(cfg, task.info.metric),
                   tracker=tracker)
    except (Diverged, Pruned):
        raise  # every rank saw it (the same loss, rank 0's pruning decision)
    except Exception as exc:
        raise group.failed_rank(exc) from exc
    finally:
        group.leave()


def _follow(cfg: DictConfig, group: SlurmGroup) -> dict[str, Any]:
    """A rank other than 0 of a Slurm job of several tasks: it trains when rank 0 says the cell
    trains, logs to the cell's train.rank<N>.log, and returns rank 0's record. Its own error is left
    for rank 0's record, and raised (the Slurm task fails with it)."""
    preemption.install()
    _set_threads()
    plan = group.plan()
    if plan["train"]:
        run_dir = Path(plan["run_dir"])
        with _log_to(run_dir / f"train.rank{group.ranks.rank}.log"):
            try:
                task = instantiate(cfg.task, **plan["task_args"])
                with preemption.immediate():
                    task.prepare()
                seed_everything(cfg.seed)
                model = task.build_model(cfg.model)
                group.join()
                fit(model, task, cfg.trainer, run_dir, cfg.seed)
            except (Diverged, Pruned):
                pass  # rank 0 saw it too and records it
            except Exception as exc:
                log.error("rank %d failed: %s: %s", group.ranks.rank, type(exc).__name__, exc)
                group.report_error(exc)
                raise
            finally:
                group.leave()
    return group.record()


def _fit_rank(config: dict, run_dir: Path, state: dict, relay: Optional[tracking.Relay]) -> tuple[str, Any]:
    """One rank of _fit_on_ranks: the task and model rebuilt from the job's config, the job's weights."""
    from ablate.train.distributed import rank_and_world

    cfg = OmegaConf.create(config)
    rank, world = rank_and_world()
    preemption.install()  # the agent passes the job's SIGTERM on: stop at a step, save, end
    _set_threads()
    torch.set_num_threads(max(1, torch.get_num_threads() // world))  # the job's cores, shared by its ranks
    with _log_to(run_dir / "train.log") if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        task = instantiate(cfg.task)
        task.prepare()
        seed_everything(cfg.seed)
        model = task.build_model(cfg.model)
        model.load_state_dict(state)
        try:
            result = fit(model, task, cfg.trainer, run_dir, cfg.seed,
                         on_eval=_pruning_hook(cfg, task.info.metric) if rank == 0 else None,
                         tracker=relay if rank == 0 else None)
        except Diverged as exc:
            return "diverged", str(exc)
        except Pruned as exc:
            return "pruned", str(exc)
        return "completed", (result, task.data_summary())


def _initial_weights(cfg: DictConfig, config: Mapping[str, Any]) -> tuple[Optional[dict], dict[str, Any]]:
    """The record's `init` block and the task arguments that load those weights.

    task.backbone_from=T: the final checkpoint of the upstream cell (ablate.chain), which must be a
    completed classification cell (else UpstreamNotCompleted: the cell is skipped); task.backbone_ckpt:
    a user's own file; neither: None (weights from the model's init).
    """
    wanted = chain.upstream_task(config)
    if wanted is None:
        path = cfg.task.get("backbone_ckpt")
        if not path:
            return None, {}
        digest = chain.sha256(path) if Path(path).is_file() else None  # a missing file: the task names it
        return {"upstream_run_id": None, "checkpoint": str(path), "sha256": digest}, {}
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = Path(HydraConfig.get().sweep.dir) if HydraConfig.initialized() else None
    upstream = chain.find_upstream(config, Path(cfg.paths.results), sweep_dir)
    if not upstream.completed:
        raise chain.UpstreamNotCompleted(upstream)
    kind = upstream.record["task"]["kind"]
    if kind != "classification":
        raise chain.UpstreamError(f"task.backbone_from={wanted} is a {kind} task: a backbone starts from a "
                                  f"classification cell's weights (e.g. imagenet)")
    path = upstream.checkpoint
    if not path.is_file():
        raise chain.UpstreamError(f"task.backbone_from={wanted}: cell {upstream.run_id} completed but its final "
                                  f"checkpoint {path} is gone; rerun that cell with +rerun=all")
    init = {"upstream_run_id": upstream.run_id, "checkpoint": str(path), "sha256": chain.sha256(path)}
    log.info("the backbone starts from %s cell %s (%s, sha256 %s)", wanted, upstream.run_id, path, init["sha256"][:12])
    return init, {"backbone_ckpt": str(path), chain.UPSTREAM_KEY: None}


def record_death(cfg: DictConfig, overrides: list[str], error: BaseException,
                 sweep_dir: Optional[Path] = None) -> dict[str, Any]:
    """The failed record of a cell whose job process ended without writing one (killed by a signal
    or the OOM killer, a Slurm job cancelled or lost), written by the sweep's driver: `error` says how
    it ended. A completed record, or one the job wrote itself, is kept and returned. A downstream cell
    whose upstream did not complete (Slurm cancels a job whose afterok dependency failed) is skipped;
    `sweep_dir` (the sweep's folder) is where its upstream is looked for first."""
    try:
        validate(cfg)
        valid = True
    except ConfigError:
        valid = False
    config, run_id = cell.resolve(cfg, scale_lr=valid)
    overrides, config = secrets.redact_tree(list(overrides)), secrets.redact_tree(config)
    run_dir = Path(cfg.paths.results) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):  # a dead process holds no lock; a live one of the same cell is waited for
        previous = _read_previous(run_dir / records.RESULT_FILE)
        if previous is not None:  # the job wrote its record (it died on the way out) or the cell is done
            return previous
        record = _new_record(config, overrides, run_id)
        record["error"] = _error(error)
        if chain.upstream_task(config) is not None:
            try:
                upstream = chain.find_upstream(config, Path(cfg.paths.results), sweep_dir)
            except chain.UpstreamError:
                upstream = None
            if upstream is not None and not upstream.completed:
                skipped = chain.UpstreamNotCompleted(upstream)
                record["status"], record["error"], record["init"] = records.Status.SKIPPED, _error(skipped), skipped.init
        record["curve"] = Curve.read(run_dir).summary()
        record["env"]["finished_at"] = _now()
        records.write_json_atomic(run_dir / records.RESULT_FILE, record)
    log.error("cell %s %s: %s: %s", run_id, record["status"], record["error"]["type"], record["error"]["message"])
    return record


def _new_record(config: dict, overrides: list[str], run_id: str) -> dict[str, Any]:
    family = _family(config["model"])
    return records.new_record(config, overrides, run_id, family=family.facts() if family is not None else None,
                              env=_environment(), curve=Curve().summary())


def _family(model: Mapping[str, Any]) -> Optional[Family]:
    try:
        return family_of(model.get("name"))
    except ValueError:  # an unknown variant: validation names it, the record still gets written
        return None


def _arms(model: Mapping[str, Any]) -> dict[str, bool]:
    """{switch: on?} of the model's family, for the tracker's run name and tags."""
    family = _family(model)
    return {s.key: bool(model.get(s.key)) for s in family.switches} if family is not None else {}


def _unwritable(config: dict, overrides: list[str], run_id: str, error: OSError) -> dict[str, Any]:
    """A cell that cannot be written and has no completed record to reuse: one line, a failed record in memory."""
    log.error("cell %s cannot run: %s; no completed record to reuse there (give a writable paths.results)",
              run_id, error)
    record = _new_record(config, overrides, run_id)
    record["error"] = _error(error)
    return record


def _read_only(error: OSError) -> bool:
    return error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


def _throughput(result: Any, task: Any) -> dict[str, Optional[float]]:
    n_eval = task.num_eval_samples()
    return {
        "train_throughput": round(result.train_images / result.train_seconds, 2) if result.train_seconds else None,
        "eval_throughput": round(n_eval / result.eval_seconds, 2) if n_eval and result.eval_seconds else None,
    }


def _pruning_hook(cfg: DictConfig, metric: str):
    """Report each evaluation to the Optuna trial this job belongs to (if any); may raise Pruned."""
    if cfg.get("tuning") is None:
        return None
    from ablate.tune.pruning import reporter_from_config

    return reporter_from_config(cfg, metric=metric)


def _error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__  # report the task's own error, not Hydra's wrapper around it
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()[-30:]
    message = str(exc).splitlines()[0] if str(exc) else ""
    return {"type": type(exc).__name__, "message": secrets.redact(message), "traceback": secrets.redact("\n".join(tail))}


def _read_previous(path: Path) -> Optional[dict]:
    try:
        return records.read(path) if path.exists() else None
    except ValueError as exc:
        log.warning("ignoring unreadable previous record: %s", exc)
        return None


def _archive(run_dir: Path, previous: Mapping[str, Any], fresh_start: bool) -> None:
    """Keep the earlier attempt's record and curve (and, for +rerun=all, its checkpoint) under history/."""
    history = run_dir / "history"
    history.mkdir(exist_ok=True)
    stamp = (previous.get("env", {}).get("finished_at") or _now()).replace(":", "-")
    shutil.move(str(run_dir / records.RESULT_FILE), history / f"result-{stamp}.json")
    if (run_dir / CURVE_FILE).exists():  # the attempt's curve goes with its record (a resume rewrites it)
        shutil.move(str(run_dir / CURVE_FILE), history / f"curve-{stamp}.json")
    if fresh_start and (run_dir / records.CHECKPOINT_FILE).exists():
        shutil.move(str(run_dir / records.CHECKPOINT_FILE), history / f"checkpoint-{stamp}.pt")


def _config_error(cfg: DictConfig, group: Optional[SlurmGroup]) -> Optional[ConfigError]:
    """A setting outside what is allowed. A single run raises it (one line, exit 2, nothing written);
    inside a multirun it is returned, so that this cell is recorded as failed and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        validate(cfg)
        _check_placement(cfg.trainer, group)
    except ConfigError as exc:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return exc
        raise
    return None


def _check_placement(trainer: DictConfig, group: Optional[SlurmGroup]) -> None:
    """Several nodes only as a Slurm job, whose tasks must be the ranks the trainer asks for."""
    if group is None and trainer.nodes > 1:
        raise ConfigError(f"trainer.nodes={trainer.nodes} is not allowed here: a job of several nodes runs only "
                          f"under hydra/launcher=slurm (one rank per Slurm task); on one machine use "
                          f"trainer.nodes=1 and trainer.devices=N")
    wanted = trainer.devices * trainer.nodes
    if group is not None and group.ranks.world != wanted:
        raise ConfigError(f"trainer.devices={trainer.devices} x trainer.nodes={trainer.nodes} is {wanted} ranks, but "
                          f"Slurm started {group.ranks.world} tasks: leave hydra.launcher.tasks_per_node and "
                          f"hydra.launcher.nodes to the launcher, which sets them from trainer.devices and trainer.nodes")


def _hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _write_cell_pointer(run_id: str, run_dir: Path, overrides: list[str]) -> None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        pointer = {"run_id": run_id, "run_dir": str(run_dir), "overrides": overrides}
        try:
            records.write_json_atomic(job_dir / "cell.json", pointer)
        except OSError as exc:
            if not _read_only(exc):
                raise
            log.warning("no cell pointer for %s (the report will not list this job): %s", run_id, exc)


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[Optional[OSError]]:
    """Hold the cell's lock; yield None, or the error that makes the folder read-only (then unlocked).

    Nobody can write a read-only cell folder, so reading its completed record needs no lock.
    """
    try:
        handle = open(run_dir / ".lock", "w")
    except OSError as exc:
        if not _read_only(exc):
            raise
        yield exc
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("cell %s is running in another job; waiting for it", run_dir.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield None


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        if not _read_only(exc):
            raise
        yield  # a read-only cell folder: its completed record can still be reused, without a log line there
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("ablate")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _set_threads() -> None:
    """Use the cores this job was given (local launcher split, or the Slurm allocation)."""
    for var in ("ABLATE_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        if os.environ.get(var, "").isdigit():
            torch.set_num_threads(int(os.environ[var]))
            return


def _peak_memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB -> MiB, CPU RSS


def _environment() -> dict[str, Any]:
    import timm

    cuda = torch.cuda.is_available()
    return {
        "ablate": ablate.__version__, **dict(zip(("git_commit", "git_dirty"), records.code_version())),
        "torch": torch.__version__,
        "timm": timm.__version__, "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "hostname": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "scan_backend": ablate.models.ssm.scan_backend(),
        "started_at": _now(), "finished_at": None,
    }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
