"""The Hydra Sweeper plugin: parses the space, then hands the loop to `ablate.tune.tuner`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.ablate_optuna_sweeper import config  # noqa: F401  (registers the configs)


class OptunaFairSweeper(Sweeper):
    def __init__(
        self,
        direction: str,
        n_trials: int,
        n_jobs: int,
        storage: Optional[str],
        study_name: Optional[str],
        sampler: Any,
        pruner: Any,
        params: Any,
        per_arm: Optional[str],
        final_seeds: Any,
    ) -> None:
        super().__init__()
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.storage = storage
        self.study_name = study_name
        self.sampler = _plain(sampler)
        self.pruner = _plain(pruner)
        self.params = _plain(params) or {}
        self.per_arm = per_arm
        self.final_seeds = tuple(_plain(final_seeds) or ())
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self._validated_keys: set[tuple[str, ...]] = set()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> List[Sequence[JobReturn]]:
        # Imported here: Hydra imports every hydra_plugins module at start-up of any app, and
        # optuna is only needed when this sweeper actually runs.
        from ablate.secrets import redact
        from ablate.tune.space import parse_plan
        from ablate.tune.storage import resolve_storage_url
        from ablate.tune.tuner import FairTuner, TuneSettings

        assert self.config is not None and self.hydra_context is not None
        settings = TuneSettings(direction=self.direction, n_trials=self.n_trials,
                                n_jobs=self.n_jobs, sampler=self.sampler, pruner=self.pruner,
                                final_seeds=self.final_seeds)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        plan = parse_plan(self.params, arguments, self.per_arm, parser)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # What Hydra's own sweepers save, minus any password (e.g. a raw hydra.sweeper.storage URL).
        (sweep_dir / "multirun.yaml").write_text(redact(OmegaConf.to_yaml(self.config)))
        tuner = FairTuner(plan, settings, resolve_storage_url(self.storage, sweep_dir),
                          self.study_name or sweep_dir.resolve().name, sweep_dir)
        return tuner.run(self._launch)

    def _launch(self, batch: List[List[str]], first_job: int) -> Sequence[JobReturn]:
        # Compose one job per new set of override keys before launching (an unknown key fails
        # before anything runs). Jobs that differ only in values are composed by the launcher;
        # composing all of them twice would double the sweep's start-up cost per trial.
        unseen = {}
        for overrides in batch:
            keys = tuple(o.split("=", 1)[0] for o in overrides)
            if keys not in self._validated_keys:
                unseen[keys] = overrides
        self.validate_batch_is_legal(list(unseen.values()))
        self._validated_keys.update(unseen)
        return self.launcher.launch(batch, initial_job_idx=first_job)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
