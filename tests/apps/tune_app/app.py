"""A tiny Hydra app for the tuning tests: a known objective of x, y that can fail, diverge,
report intermediate values for pruning, or die like a killed sweep.

    score = 10 - (x - 1)^2 - (y + 2)^2 + (1 if model.ssm else 0)    maximum at x=1, y=-2
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ablate.tune.pruning import reporter_from_config


def score(x: float, y: float, ssm: bool) -> float:
    return 10.0 - (x - 1.0) ** 2 - (y + 2.0) ** 2 + (1.0 if ssm else 0.0)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    if cfg.die_at_job is not None and HydraConfig.get().job.num == cfg.die_at_job:
        marker = Path(cfg.die_marker)
        if not marker.exists():
            marker.write_text("died once\n")
            os._exit(3)  # like a killed sweep: no cleanup, the current trial stays RUNNING
    value = score(cfg.x, cfg.y, cfg.model.ssm)
    if cfg.fail_if_x_below is not None and cfg.x < cfg.fail_if_x_below:
        raise RuntimeError(f"x={cfg.x} is below {cfg.fail_if_x_below}")
    if cfg.diverge_if_y_above is not None and cfg.y > cfg.diverge_if_y_above:
        return _record(cfg, "diverged", None)
    report = reporter_from_config(cfg, metric="score")
    try:
        for step in range(cfg.steps):
            if report is not None:
                report(step, {"score": value})
    except optuna.TrialPruned:
        if not cfg.record:
            raise  # the sweeper also understands a job that raises TrialPruned
        return _record(cfg, "pruned", None)
    return _record(cfg, "completed", value) if cfg.record else value


def _record(cfg: DictConfig, status: str, value: float | None) -> dict[str, Any]:
    return {
        "status": status,
        "run_id": f"x{cfg.x:.6f}y{cfg.y:.6f}s{cfg.seed}",
        "task": {"name": "toy", "metric": "score", "higher_is_better": cfg.higher_is_better},
        "metrics": {} if value is None else {"score": value},
        "error": None,
    }


if __name__ == "__main__":
    main()
