"""Entry point: one Hydra job per sweep cell.

    python run.py -m model.ssm=true,false task=shapes,pathfinder seed=0,1 +experiment=demo
"""
import logging
import sys

import hydra
from omegaconf import DictConfig

from ablate.config import ConfigError  # also registers the config schemas


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ablate.job import run

    try:
        record = run(cfg)
    except ConfigError as exc:  # a single run's bad setting (a multirun records it per cell): one line
        logging.getLogger("ablate").error("config error: %s", exc)
        sys.exit(2)
    if HydraConfig.get().mode == RunMode.RUN and record["status"] in ("failed", "skipped"):
        sys.exit(1)  # a multirun goes on to its other cells and counts this one at the end
    return record


if __name__ == "__main__":
    main()  # a multirun with an unfinished cell exits 1 from its report callback (conf/config.yaml)
