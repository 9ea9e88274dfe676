"""``hydra/launcher=slurm``: Hydra's submitit Slurm launcher, returning every job's outcome.

The stock launcher collects the results in job order and raises at the first job that left none
(killed for memory, node failure, ``scancel``, ``os._exit``): the sweep's driver then stops
waiting while the other jobs still run, and Hydra (or a tuning sweeper) sees no outcome at all.
This subclass submits exactly as the stock one does (one Slurm array, the same parameters, the
same requeue on preemption or time-out through ``checkpoint()``) and waits for every job, handing
back a FAILED ``JobReturn`` with submitit's error for a job that ended without a result.

Before submitting, it composes each job's config and checks its settings (ablate.config.validate):
a job whose settings are not allowed (``model.scan=foo``) is not queued; it fails at once with its
one-line error, instead of after a wait in the queue, and the other jobs are submitted.

Each job asks Slurm for its cell's ranks: ``trainer.nodes`` nodes with ``trainer.devices`` tasks
each (and as many GPUs per node, unless ``hydra.launcher.gpus_per_node`` is null: a CPU cluster);
jobs that ask for the same go in one array. srun starts one process per task; each is a rank of
the job (ablate.job: rank 0 runs the cell, the others train with it). A rank other than 0 logs to
``<job>/<name>.rank<N>.log`` and leaves Hydra's ``.hydra`` copies to rank 0.

Configured by conf/hydra/launcher/slurm.yaml (``defaults: [submitit_slurm]`` plus our defaults).
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

from hydra_plugins.ablate_launcher._common import failed_return, upstream_jobs

log = logging.getLogger(__name__)

# Launcher settings that configure the executor itself rather than each job.
_EXECUTOR_KEYS = ("submitit_folder", "max_num_timeout")


class AblateSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit  # here, not at module level: Hydra's plugin scan stays fast

        from ablate.config import setting_error  # (imports the model and task modules)

        assert self.config is not None
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        parameters = _job_parameters(self.params)
        executor.update_parameters(**parameters)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")

        numbers = [initial_job_idx + n for n in range(len(job_overrides))]
        overrides = [list(job) for job in job_overrides]
        refused, configs = {}, []
        for number, job in zip(numbers, overrides):
            log.info(f"\t#{number} : {' '.join(filter_overrides(job))}")
            configs.append(self.hydra_context.config_loader.load_sweep_config(self.config, job))
            error = setting_error(configs[-1])
            if error is not None:
                log.error(f"\t#{number} not submitted: config error: {error}")
                refused[number] = failed_return(job, error)
        shape_error = _hand_set_shape(parameters)
        shapes = {}
        for number, job, config in zip(numbers, overrides, configs):
            if number not in refused and shape_error is not None:
                log.error(f"\t#{number} not submitted: config error: {shape_error}")
                refused[number] = failed_return(job, shape_error)
            shapes[number] = _ranks_shape(config, parameters)
        waits_for = upstream_jobs(numbers, configs)
        _refuse_orphans(numbers, overrides, configs, waits_for, refused)
        state = Singleton.get_state()
        # The arguments of each job's __call__: overrides, job_dir_key, job_num, job_id, singletons.
        # One array per shape of job (nodes x tasks x GPUs), in the order of the jobs.
        submitted = {}
        fresh = [n for n in numbers if n not in refused and not waits_for[n]]
        for shape in dict.fromkeys(shapes[n] for n in fresh):
            group = [n for n in fresh if shapes[n] == shape]
            executor.update_parameters(**dict(shape))
            submitted.update(zip(group, executor.map_array(
                self, [overrides[numbers.index(n)] for n in group], ["hydra.sweep.dir"] * len(group), group,
                [f"job_id_for_{n}" for n in group], [state] * len(group))))
        # Fine-tuning cells (ablate.chain), each once its upstream jobs have succeeded; Slurm cancels one
        # whose upstream failed, and the sweep then records it as skipped (ablate.job.record_death).
        extra = dict(parameters.get("slurm_additional_parameters") or {})
        for n, job in zip(numbers, overrides):
            if n in refused or not waits_for[n]:
                continue
            ids = ":".join(submitted[up].job_id for up in waits_for[n])
            executor.update_parameters(**dict(shapes[n]), slurm_additional_parameters={
                **extra, "dependency": f"afterok:{ids}", "kill-on-invalid-dep": "yes"})
            submitted[n] = executor.submit(self, job, "hydra.sweep.dir", n, f"job_id_for_{n}", state)
            log.info(f"\t#{n} submitted as {submitted[n].job_id} after {ids}")
        executor.update_parameters(slurm_additional_parameters=extra)
        outcomes = {n: _outcome(submitted[n], job) for n, job in zip(numbers, overrides) if n in submitted}
        return [refused.get(n) or outcomes[n] for n in numbers]


    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> JobReturn:
        """One task of a job, as the stock launcher runs it; a rank other than 0 writes its own log file
        and no second copy of Hydra's .hydra files."""
        import submitit

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        environment = submitit.JobEnvironment()
        with open_dict(sweep_config.hydra):
            sweep_config.hydra.job.id = environment.job_id
            sweep_config.hydra.job.num = job_num
            rank = environment.global_rank
            if rank:
                sweep_config.hydra.output_subdir = None
                handlers = sweep_config.hydra.job_logging.get("handlers") or {}
                if "file" in handlers:
                    handlers.file.filename = "${hydra.runtime.output_dir}/${hydra.job.name}.rank%d.log" % rank
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                       job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")


def _ranks_shape(config: Any, parameters: Dict[str, Any]) -> tuple:
    """What a job asks Slurm for, as executor parameters: trainer.nodes nodes of trainer.devices tasks
    (one per rank), and as many GPUs per node unless the launcher asks for none (gpus_per_node null)."""
    devices = int(OmegaConf.select(config, "trainer.devices") or 1)
    nodes = int(OmegaConf.select(config, "trainer.nodes") or 1)
    gpus = None if parameters.get("gpus_per_node") is None else devices
    return (("nodes", nodes), ("tasks_per_node", devices), ("gpus_per_node", gpus))


def _hand_set_shape(parameters: Dict[str, Any]) -> Any:
    """The error for launcher settings that would contradict the ranks a job's trainer asks for."""
    from ablate.config import ConfigError

    for key, owner in (("nodes", "trainer.nodes"), ("tasks_per_node", "trainer.devices")):
        if parameters.get(key) not in (None, 1):
            return ConfigError(f"hydra.launcher.{key}={parameters[key]} is not allowed: leave it at 1; the launcher "
                               f"asks Slurm for each job's ranks from {owner}")
    return None


def _refuse_orphans(numbers: List[int], overrides: List[List[str]], configs: List[Any],
                    waits_for: Dict[int, List[int]], refused: Dict[int, JobReturn]) -> None:
    """A job whose upstream job was not submitted is not submitted either (added to `refused`): its cell
    could not start from that cell's weights."""
    from ablate import chain

    for n, job, config in zip(numbers, overrides, configs):
        unsent = [up for up in waits_for[n] if up in refused]
        if unsent and n not in refused:
            error = chain.UpstreamError(f"its upstream job #{unsent[0]} (task.{chain.UPSTREAM_KEY}="
                                        f"{config.task.get(chain.UPSTREAM_KEY)}) was not submitted")
            log.error(f"\t#{n} not submitted: {error}")
            refused[n] = failed_return(job, error)


def _job_parameters(params: Dict[str, Any]) -> Dict[str, Any]:
    """Launcher settings as submitit's executor names them: Slurm-only ones get a ``slurm_`` prefix."""
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    return {key if key in shared else f"slurm_{key}": value
            for key, value in params.items() if key not in _EXECUTOR_KEYS}


def _outcome(job: Any, overrides: List[str]) -> JobReturn:
    """The JobReturn the job pickled, or a FAILED one when it left none (or failed outside Hydra)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return job.results()[0]
    except (UncompletedJobError, FailedJobError) as error:
        first_line = str(error).strip().splitlines()[0]
        log.error(f"\tjob {job.job_id} ({' '.join(filter_overrides(overrides))}) ended without a result: {first_line}")
        return failed_return(overrides, error)
