"""Config of the `optuna_fair` sweeper and its sampler/pruner options, in Hydra's ConfigStore.

    hydra/sweeper=optuna_fair             this sweeper
    hydra/sweeper/sampler=tpe|random      TPESampler (default) or RandomSampler, both seed 0
    hydra/sweeper/pruner=median|percentile|hyperband|threshold|nop   MedianPruner by default
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": 0},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
}
PRUNERS = {
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5,
               "n_warmup_steps": 0},
    "percentile": {"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0,
                   "n_startup_trials": 5, "n_warmup_steps": 0},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1,
                  "max_resource": "auto", "reduction_factor": 3},
    # Set hydra.sweeper.pruner.lower and/or .upper (e.g. an upper bound on a diverging loss).
    "threshold": {"_target_": "optuna.pruners.ThresholdPruner", "lower": None, "upper": None},
    "nop": {"_target_": "optuna.pruners.NopPruner"},
}


@dataclass
class OptunaFairSweeperConf:
    _target_: str = "hydra_plugins.ablate_optuna_sweeper.sweeper.OptunaFairSweeper"
    # _self_ first, so the chosen sampler/pruner options fill the nodes below.
    defaults: List[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "median"}]
    )
    # Keep sampler/pruner as plain config: every arm builds its own sampler with the same seed,
    # and jobs rebuild the pruner from the study.
    _recursive_: bool = False
    direction: str = "maximize"  # or minimize
    n_trials: int = 20  # total budget per arm; a resumed study runs only the remainder
    n_jobs: int = 1  # jobs per launcher batch
    storage: Optional[str] = None  # None: sqlite:///<sweep dir>/optuna.db; env:NAME / file:PATH keep a password out
    study_name: Optional[str] = None  # None: the sweep dir's name
    sampler: Any = None
    pruner: Any = None
    params: Optional[Dict[str, str]] = None  # search space, e.g. {lr: "tag(log, interval(1e-4, 1e-1))"}
    per_arm: Optional[str] = None  # e.g. model.ssm: one study per level of this factor
    final_seeds: List[int] = field(default_factory=list)  # final comparison runs, one per seed


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna_fair", node=OptunaFairSweeperConf,
                provider="ablate")
    for name, node in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="ablate")
    for name, node in PRUNERS.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="ablate")


register()
