"""Entry point: one Hydra job per sweep cell.

    python run.py -m model.ssm=true,false task=shapes,pathfinder seed=0,1 +experiment=demo
"""
import hydra
from omegaconf import DictConfig

import ablate.config  # noqa: F401  (registers the config schemas)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from ablate.job import run

    return run(cfg)


if __name__ == "__main__":
    main()
