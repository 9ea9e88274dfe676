"""``hydra/sweeper=grid``: a Cartesian sweep, or a union of several, that never stops early.

Hydra's basic sweeper raises at the first job that came back FAILED from its launcher (a job
process killed by a signal or the OOM killer, a Slurm job cancelled or lost): the multirun ends
there, later batches never run and ``on_multirun_end`` (the report) is skipped. This sweeper runs
every batch and writes, for each such job, the cell's failed record (``ablate.job.record_death``:
the error says how the process ended), so the report lists the cell as failed with its overrides
and the run exits 1.

A sweep may also be a union of grids, declared in an experiment file:

    hydra:
      sweeper:
        params:               # swept in every grid
          model.ssm: true,false
          seed: 0,1,2
        grids:                # one Cartesian product each; the sweep runs their union
          - task: shapes
          - task: pathfinder
            task.image_size: "[64,64],[208,208]"

A key given both in a grid and in ``params`` takes the grid's value; the command line wins over
both (as everywhere in Hydra). A cell that two grids both produce runs once. Jobs that set
``task.backbone_from`` (a fine-tuning cell, ablate.chain) run after the others.
"""
# No `from __future__ import annotations`: see hydra_plugins/ablate_launcher/local_launcher.py.
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.ablate_grid_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None  # swept in every grid
    grids: Optional[List[Dict[str, Any]]] = None  # None: one grid, `params` x the command line


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="ablate")


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 grids: Optional[List[Dict[str, Any]]] = None) -> None:
        # BasicSweeper.__init__'s state, set here: its own super(BasicSweeper, self) call fails when
        # Hydra's plugin scan has re-executed its module after this class was defined (as in a test run)
        self.overrides = None
        self.batch_index = 0
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.hydra_context = self.config = self.launcher = None
        self.grids = [dict(grid) for grid in grids] if grids else [{}]
        for n, grid in enumerate(self.grids):
            for key, value in grid.items():
                if not isinstance(value, (str, int, float, bool)):
                    raise ValueError(f"hydra.sweeper.grids[{n}].{key}={value!r}: give a value or a sweep as one "
                                     f"string, e.g. \"[64,64],[208,208]\"")

    def job_overrides(self, arguments: Sequence[str]) -> List[List[str]]:
        """Every job's overrides: each grid's product, in grid order, without repeats."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        return grid_jobs(self._parse_config(), self.grids, arguments, parser)

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        jobs = self.job_overrides(arguments)
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: List[Sequence[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for number, result in enumerate(results, start=initial_job_idx):
                if result.status == JobStatus.FAILED:
                    self._record_death(number, result)
            initial_job_idx += len(batch)
            returns.append(results)
        return returns

    def _record_death(self, number: int, result: JobReturn) -> None:
        """A job that ended without an outcome of its own: its cell's record says how it died."""
        from ablate.job import record_death

        error = result._return_value
        overrides = list(result.overrides or [])
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.error(f"\t#{number} ({' '.join(filter_overrides(overrides))}) ended without a result: {first_line}")
        try:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(config):  # the job's own view: no hydra node (as run_job gives it), its sweep's name
                del config["hydra"]
                config.sweep = Path(str(self.config.hydra.sweep.dir)).name
            record_death(config, overrides, error, Path(str(self.config.hydra.sweep.dir)))
        except Exception as exc:  # noqa: BLE001 - the sweep goes on; the report lists the cell without a record
            log.error(f"\t#{number}: its failed record could not be written: {type(exc).__name__}: {exc}")


def grid_jobs(params: Sequence[str], grids: Sequence[Dict[str, Any]], arguments: Sequence[str],
              parser: OverridesParser) -> List[List[str]]:
    """The jobs of a union of grids: `params` ("key=values" swept in every grid) x each grid x the
    command line `arguments`, in grid order, a job two grids share once. `ablate plan` lists the same."""
    jobs: List[List[str]] = []
    seen = set()
    for grid in grids or [{}]:
        # later entries win per key (split_arguments keeps one value list per key)
        texts = [*params, *(f"{k}={_text(v)}" for k, v in grid.items()), *arguments]
        for batch in BasicSweeper.split_arguments(parser.parse_overrides(texts), None):
            for job in batch:
                key = tuple(sorted(job))
                if key not in seen:
                    seen.add(key)
                    jobs.append(job)
    # Cells that start from another cell's checkpoint (task.backbone_from, ablate.chain) after the cells
    # that start afresh, so that a launcher running jobs in order (Hydra's basic one) trains the upstream
    # cell first; the local and Slurm launchers also wait on it. A stable sort: otherwise grid order.
    from ablate.chain import UPSTREAM_KEY
    from ablate.records import override_parts

    return sorted(jobs, key=lambda job: any(override_parts(item)[0] == f"task.{UPSTREAM_KEY}" for item in job))


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
