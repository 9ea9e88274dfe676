"""Fair tuning: Optuna studies driven by the `optuna_fair` Hydra sweeper, one per arm.

    space.py    Hydra sweep overrides -> fixed overrides, Optuna distributions, arms
    storage.py  storage URLs (sqlite in the sweep dir, journal files, RDB) -> Optuna storages
    study.py    create-or-resume, budget, the interrupted-trial rule, duplicate proposals
    outcome.py  a job's JobReturn / result record -> COMPLETE, PRUNED or FAIL
    tuner.py    the per-arm loop and the final comparison (launcher-agnostic)
    pruning.py  reporter_from_config(cfg): the training loop's on_eval hook for pruning

The tuner writes its summary, tuning.json (ablate.records.tuning), for the report's tuning section
(ablate.analysis.tuning). The Hydra plugin lives in hydra_plugins/ablate_optuna_sweeper (`hydra/sweeper=optuna_fair`).
"""
from ablate.tune.errors import TuneConfigError
from ablate.tune.pruning import reporter_from_config

__all__ = ["TuneConfigError", "reporter_from_config"]
