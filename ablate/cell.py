"""What defines a cell: the resolved job config its record holds, and its run_id.

The job and `ablate plan` both call `resolve`, so a planned cell and the cell a job runs always
have the same run_id. Two rules make the config the cell's, not the command line's:

* the learning rate is written out (trainer.lr: the linear-scaling rule's value when unset);
* keys the model does not use (its family's inert keys, e.g. model.scan, d_state and dt_rank while
  model.ssm=false) are set to their schema defaults. So `model.ssm=true,false model.scan=cross,raster`
  is 3 cells, not 4: the two SSM-off jobs share one trained cell, and a pairing over model.scan
  can never pair a model with itself.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ablate import chain, records
from ablate.models import family_of
from ablate.train.lr import effective_lr


def resolve(cfg: DictConfig, scale_lr: bool = True) -> tuple[dict[str, Any], str]:
    """(config, run_id) of the cell `cfg` runs. `rerun` is an instruction, not part of the cell: dropped.

    scale_lr=False leaves trainer.lr as given (for a config already known to be invalid, whose
    lr_base_size or batch_size would break the rule itself).
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("rerun", None)
    if scale_lr:
        config["trainer"]["lr"] = effective_lr(cfg.trainer)
    config["model"] = model_settings(cfg.model)
    return config, records.run_id(config)


def model_settings(model_cfg: DictConfig) -> dict[str, Any]:
    """The model config as a cell's record holds it: resolved, the keys the model does not use at their defaults."""
    return {**OmegaConf.to_container(model_cfg, resolve=True), **inert_defaults(model_cfg)}


def chain_view(cfg: DictConfig) -> dict[str, Any] | None:
    """The part of a job's config that ablate.chain matches cells on (task name and backbone_from, seed,
    the model settings as the record holds them), read without resolving the rest: a launcher holds
    the job's config with its unresolved hydra node. None for an app's config that is not a cell's."""
    if not all(key in cfg for key in ("model", "task", "seed")):
        return None
    return {"task": {"name": cfg.task.name, chain.UPSTREAM_KEY: cfg.task.get(chain.UPSTREAM_KEY)},
            "seed": cfg.seed, "model": model_settings(cfg.model)}


def inert_defaults(model_cfg: DictConfig) -> dict[str, Any]:
    """{key: schema default} for each key of `model_cfg` its model does not use; {} for an unknown variant
    (validation reports that) or a schema without a default for the key."""
    try:
        family = family_of(model_cfg.get("name"))
    except ValueError:
        return {}
    schema = OmegaConf.get_type(model_cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING} \
        if dataclasses.is_dataclass(schema) else {}
    return {key: defaults[key] for key in family.inert_keys(model_cfg) if key in model_cfg and key in defaults}
