"""One sweep cell, start to finish: config -> task -> model -> fit -> result record.

    run(cfg)  is what run.py calls for every Hydra job. It never raises for a failing cell: the
    error goes into the record (status failed/diverged/pruned) and the sweep goes on.

Cells are content-addressed: results/runs/<run_id>/ (run_id = hash of the semantic config), so a
re-run of a sweep reuses completed cells, resumes interrupted ones from their checkpoint, and two
sweeps that share a cell compute it once. The cell folder's bookkeeping (its lock, the previous
record, history/, the atomic write) is `ablate.records.CellStore`'s; a job builds one complete
`ablate.records.Record` per attempt, from what the attempt found out (`Attempt`), and hands it over once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import platform
import resource
import socket
import time
import traceback
from dataclasses import dataclass, field
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
from ablate.train.loop import Curve, fit, resolve_device, seed_everything
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


@dataclass
class Attempt:
    """What one attempt at a cell found out, filled in as it runs; the record is built from it once."""

    status: records.Status = records.Status.FAILED  # until the cell completes, is skipped, diverges or is pruned
    error: Optional[records.ErrorInfo] = None
    task: Optional[records.TaskInfo] = None
    init: Optional[records.Init] = None
    cost: dict[str, Any] = field(default_factory=dict)  # records.Cost's fields, and the extras beside them
    metrics: dict[str, float] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)
    set_aside: Optional[records.SetAside] = None

    def fail(self, status: records.Status, exc: BaseException) -> None:
        self.status, self.error = status, _error(exc)


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
    store = records.CellStore(Path(cfg.paths.results), run_id)
    try:
        store.make()
    except OSError as exc:  # a new cell in a read-only (or full) results folder
        return _unwritable(config, overrides, run_id, exc)
    _point_from_job_folder(store, overrides)

    with store.locked() as read_only, _log_to(store.dir / "train.log"):
        previous = store.previous()
        if config_error is not None and previous is not None and previous["status"] != records.Status.FAILED:
            # Only a non-semantic key (device, logger, rerun...) can be bad and still name a cell that
            # has a result: that record stays as it is, and this job reports the error without writing one.
            log.error("cell %s not run: %s (its earlier record is kept)", run_id, config_error)
            return _record(config, overrides, run_id, Attempt(error=_error(config_error))).to_json()
        stale = records.staleness(previous["env"], records.code_version()[0]) if previous is not None else None
        if previous is not None and previous["status"] == records.Status.COMPLETED and rerun != "all" and not (
                stale and rerun == "stale"):
            log.info("cell %s already completed (%s): reused, not retrained", run_id, store.dir)
            if stale:
                log.warning("cell %s is stale: %s; +rerun=stale recomputes it", run_id, stale)
            return previous
        if read_only is not None:
            return _unwritable(config, overrides, run_id, read_only)
        if previous is not None:  # a stale cell's checkpoint is old code's: it starts afresh too
            store.archive(previous, fresh_start=rerun == "all" or bool(stale and rerun == "stale"))
        env = _environment()
        log.info("cell %s: %s", run_id, " ".join(overrides) or "(defaults)")
        attempt, tracker = Attempt(), None
        try:
            if config_error is not None:
                raise config_error
            attempt.init, task_args = _initial_weights(cfg, config)
            tracker = tracking.start(
                cfg.logger, run_dir=store.dir, run_id=run_id, sweep=cfg.sweep, config=config,
                task_name=cfg.task.name, variant=cfg.model.name, arms=_arms(cfg.model), resume=previous is None,
            )
            _train(cfg, store.dir, group, task_args, tracker, attempt)
        except chain.UpstreamNotCompleted as exc:  # trained from scratch it would be another cell: not run
            attempt.fail(records.Status.SKIPPED, exc)
            attempt.init = exc.init
        except Diverged as exc:
            attempt.fail(records.Status.DIVERGED, exc)
        except Pruned as exc:
            attempt.fail(records.Status.PRUNED, exc)
        except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the sweep
            attempt.fail(records.Status.FAILED, exc)
            log.error("cell %s failed: %s: %s", run_id, attempt.error.type, attempt.error.message)
        attempt.cost.update(wall_seconds=round(time.time() - started, 3), peak_memory_mb=_peak_memory_mb())
        record = _record(config, overrides, run_id, attempt, env, Curve.read(store.dir).summary())
        try:
            payload = store.write(record)
        except OSError as exc:  # e.g. ENOSPC: the cell is failed (the error names errno and path), the sweep goes on
            log.error("cell %s: its record was not written: %s", run_id, exc)
            payload = dataclasses.replace(record, status=records.Status.FAILED,
                                          error=record.error or _error(exc)).to_json()  # the first cause
        if tracker is not None:
            tracker.finish({"status": payload["status"], "metrics": payload["metrics"], "cost": payload["cost"],
                            "init": payload["init"] or {}}, attempt.status != records.Status.COMPLETED)
        if payload["status"] == records.Status.COMPLETED:
            log.info("cell %s completed: %s", run_id, payload["metrics"])
        elif payload["status"] != records.Status.FAILED:  # diverged, pruned or skipped: their only line (a failure was logged above)
            log.info("cell %s %s: %s", run_id, payload["status"], payload["error"]["message"])
        return payload


def _train(cfg: DictConfig, run_dir: Path, group: Optional[SlurmGroup], task_args: dict[str, Any],
           tracker: Optional[tracking.WandbTracker], attempt: Attempt) -> None:
    """Build the task and model and fit them, filling `attempt` as facts become known (a failure keeps
    what was learned before it). Raises what stops the cell."""
    task = instantiate(cfg.task, **task_args)  # validates the task's settings (sizes, choices)
    attempt.task = task.info
    family = family_of(cfg.model.name)
    attempt.cost["seq_len"] = family.seq_len(task.image_size)
    with preemption.immediate():  # generating a dataset: a stop signal need not wait for it
        task.prepare()
    seed_everything(cfg.seed)
    model = task.build_model(cfg.model)  # validates the variant and scan order
    model.to(resolve_device(cfg.trainer.device))  # count on the training device: the scan is slow on CPU
    attempt.cost.update(task.cost(model), tau=family.tau(cfg.model.name), **family.cost_facts(model))
    if group is not None:
        result = _fit_with_slurm_ranks(cfg, model, task, run_dir, group, task_args, tracker)
        attempt.data = task.data_summary()
    elif cfg.trainer.devices > 1:
        result, attempt.data = _fit_on_ranks(cfg, model, run_dir, tracker)
    else:
        result = fit(model, task, cfg.trainer, run_dir, cfg.seed, on_eval=_pruning_hook(cfg, task.info.metric),
                     tracker=tracker)
        attempt.data = task.data_summary()
    attempt.metrics = result.metrics
    attempt.cost.update(_throughput(result, task), steps=result.steps, resumed_from_step=result.resumed_from_step,
                        world_size=cfg.trainer.devices * cfg.trainer.nodes)
    attempt.set_aside = records.SetAside(**result.checkpoint_set_aside) if result.checkpoint_set_aside else None
    attempt.status = records.Status.COMPLETED


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


def _initial_weights(cfg: DictConfig, config: Mapping[str, Any]) -> tuple[Optional[records.Init], dict[str, Any]]:
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
        return records.Init(None, str(path), digest), {}
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
    init = records.Init(upstream.run_id, str(path), chain.sha256(path))
    log.info("the backbone starts from %s cell %s (%s, sha256 %s)", wanted, upstream.run_id, path, init.sha256[:12])
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
    store = records.CellStore(Path(cfg.paths.results), run_id)
    store.make()
    with store.locked():  # a dead process holds no lock; a live one of the same cell is waited for
        previous = store.previous()
        if previous is not None:  # the job wrote its record (it died on the way out) or the cell is done
            return previous
        attempt = Attempt(error=_error(error))
        if chain.upstream_task(config) is not None:
            try:
                upstream = chain.find_upstream(config, Path(cfg.paths.results), sweep_dir)
            except chain.UpstreamError:
                upstream = None
            if upstream is not None and not upstream.completed:
                skipped = chain.UpstreamNotCompleted(upstream)
                attempt.fail(records.Status.SKIPPED, skipped)
                attempt.init = skipped.init
        record = store.write(_record(config, overrides, run_id, attempt, curve=Curve.read(store.dir).summary()))
    log.error("cell %s %s: %s: %s", run_id, record["status"], record["error"]["type"], record["error"]["message"])
    return record


def _record(config: dict, overrides: list[str], run_id: str, attempt: Attempt, env: Optional[dict] = None,
            curve: Optional[records.CurveSummary] = None) -> records.Record:
    """The cell's one record: what this attempt found out, with the family's facts and the environment
    (`env`: taken when the attempt started; now by default), finished now."""
    family = _family(config["model"])
    facts = family.facts() if family is not None else None
    task = attempt.task or records.TaskInfo(config["task"]["name"], None, None)
    return records.Record(
        run_id=run_id, sweep=config["sweep"], status=attempt.status, error=attempt.error, config=config,
        overrides=list(overrides),
        factors=records.factors(config, overrides, always=[f"model.{key}" for key in facts.record_keys] if facts else []),
        task=task, metrics=attempt.metrics, data=attempt.data, curve=curve or Curve().summary(),
        cost=records.Cost.from_flat({"input_size": list(config["task"]["image_size"]), **attempt.cost}),
        tuning=records.Tuning.from_settings(config["tuning"]) if config.get("tuning") else None,
        env=records.Env(**{**(env or _environment()), "finished_at": records.store.now()}),
        family=facts, checkpoint_set_aside=attempt.set_aside, init=attempt.init,
    )


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
    return _record(config, overrides, run_id, Attempt(error=_error(error))).to_json()


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


def _error(exc: BaseException) -> records.ErrorInfo:
    if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__  # report the task's own error, not Hydra's wrapper around it
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()[-30:]
    message = str(exc).splitlines()[0] if str(exc) else ""
    return records.ErrorInfo(type(exc).__name__, secrets.redact(message), secrets.redact("\n".join(tail)))


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


def _point_from_job_folder(store: records.CellStore, overrides: list[str]) -> None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        store.point_from(Path(HydraConfig.get().runtime.output_dir), overrides)


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        if not records.store.read_only(exc):
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
        "started_at": records.store.now(), "finished_at": None,
    }
