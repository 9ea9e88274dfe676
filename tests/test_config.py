"""Config composition: every group option composes, and bad input fails before any job starts."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from ablate import records
from ablate.config import CONF_DIR, compose


@pytest.mark.parametrize("group", ["model", "task", "trainer", "logger"])
def test_every_option_composes(group):
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        cfg = compose([f"{group}={path.stem}"])
        OmegaConf.to_container(cfg[group], resolve=True)


def test_defaults_are_the_paper_setting():
    cfg = compose([])
    assert (cfg.model.name, cfg.model.ssm, cfg.model.scan) == ("tiny", False, "cross")
    assert cfg.task.name == "imagenet" and list(cfg.task.image_size) == [224, 224]
    t = cfg.trainer
    assert (t.epochs, t.weight_decay, t.warmup_epochs, t.min_lr, t.lr_base, t.lr_base_size) == (300, 0.05, 20, 1e-5, 1e-3, 1024)
    assert cfg.task.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.task.mixup == 0.8 and cfg.task.cutmix == 1.0
    assert cfg.task.reprob == 0.25 and cfg.task.label_smoothing == 0.1 and cfg.task.crop_pct == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.ssm=maybe", "model.ssm=maybe"),
    ("trainer.lrr=1", "trainer.lrr"),
    ("task.image_size=big", "task.image_size=big"),
    ("trainer.batch_size=1.5", "trainer.batch_size=1.5"),
    ("model=tinyy", "tinyy"),
])
def test_bad_overrides_fail_at_composition(override, message):
    with pytest.raises(ConfigCompositionException) as info:
        compose([override])
    assert message in str(info.value)


def test_demo_experiment_overrides_only_what_differs():
    cfg = compose(["+experiment=demo", "task=pathfinder"], return_hydra_config=True)
    assert cfg.model.name == "pico" and cfg.trainer.device == "cpu" and cfg.sweep == "demo"
    assert cfg.hydra.sweeper.params["model.ssm"] == "true,false"
    assert cfg.task.hflip == 0.0  # the task's own settings survive the experiment


def test_run_id_ignores_paths_logger_and_device_but_not_the_arm():
    base = OmegaConf.to_container(compose(["task=shapes", "model=pico"]), resolve=True)
    moved = OmegaConf.to_container(
        compose(["task=shapes", "model=pico", "paths.results=/elsewhere", "paths.data=/mnt/data", "logger=none",
                 "trainer.device=cpu", "trainer.num_workers=16"]),
        resolve=True,
    )
    other_arm = OmegaConf.to_container(compose(["task=shapes", "model=pico", "model.ssm=true"]), resolve=True)
    assert records.run_id(base) == records.run_id(moved)
    assert records.run_id(base) != records.run_id(other_arm)
