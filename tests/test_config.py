"""Config composition: every group option composes, and bad input fails before any job starts."""
from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from ablate import records
from ablate.config import CONF_DIR, ConfigError, compose, validate
from conftest import run_cli


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


def test_job_folder_names_leave_out_exactly_the_non_semantic_keys():
    cfg = compose([], return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys) - {"hydra/launcher", "hydra/sweeper"}
    expected = set()
    for key in records.NON_SEMANTIC_KEYS:
        if key == "tuning":  # a tuning trial's own keys must name its folder; the study and storage do not
            expected |= {"tuning.study", "tuning.storage"}
        elif key == "paths":
            expected |= {f"paths.{leaf}" for leaf in cfg.paths}
        else:
            expected.add(key)
    assert excluded == expected


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


# Every input a probe found accepted silently or failing with a traceback: one line naming key and value.
BAD_INPUTS = [
    (["trainer.max_steps=0"], "trainer.max_steps=0 "),
    (["trainer.weight_decay=-1"], "trainer.weight_decay=-1.0 "),
    (["trainer.warmup_epochs=-1"], "trainer.warmup_epochs=-1.0 "),
    (["trainer.eval_every=-1"], "trainer.eval_every=-1 "),
    (["trainer.sched=bar"], "trainer.sched='bar' "),
    (["trainer.precision=fp8"], "trainer.precision='fp8' "),
    (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0 "),
    (["trainer.device=gpu"], "trainer.device='gpu' "),
    (["+trainer.lrr=1"], "trainer.lrr is not a setting"),
    (["+model.foo=1"], "model.foo is not a setting"),
    (["task=shapes", "+task.trian_size=5"], "task.trian_size is not a setting"),
    (["task=shapes", "task.hflip=2"], "task.hflip=2.0 "),
    (["task=shapes", "task.scale=[1.0,0.08]"], "task.scale=[1.0, 0.08] "),
    (["task=shapes", "task.mean=[0.5]"], "task.mean=[0.5] "),
    (["task=shapes", "task.val_size=0"], "task.val_size=0 "),
    (["task.image_size=[64]"], "task.image_size=[64] "),
    (["+rerun=bogus"], "rerun='bogus' "),
    (["model.scan=foo"], "model.scan='foo' "),
    (["task=ade20k_toy", "task.ratio_range=[2.0,0.5]"], "task.ratio_range=[2.0, 0.5] "),
    (["logger.mode=onlin"], "logger.mode='onlin' "),
    (["trainer.opt=bogus"], "trainer.opt='bogus' "),
    (["task.auto_augment=bogus"], "task.auto_augment='bogus' "),
    (["task=shapes", "task.data_seed=-1"], "task.data_seed=-1 "),
    (["trainer.betas=[0.9]"], "trainer.betas=[0.9] "),
    (["trainer.devices=3", "trainer.batch_size=32"], "trainer.batch_size=32 is not allowed with trainer.devices=3: "
                                                     "a multiple of 3 "),
    (["trainer.devices=4", "trainer.nodes=3", "trainer.batch_size=32"],
     "trainer.batch_size=32 is not allowed with trainer.devices=4 x trainer.nodes=3: a multiple of 12 "),
    (["model=mambaout_schema"], "model.name has no value: the chosen model file sets none (a *_schema is a schema, "
                                "not a model); allowed: model= one of: base, deit, femto, kobe, nano, pico, small, tiny "),
]


@pytest.mark.parametrize("overrides, expected", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_settings_fail_with_one_line_naming_key_and_value(overrides, expected):
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides))
    message = str(info.value)
    assert message.startswith(expected.split(" ")[0].split("=")[0]) and expected.strip() in message
    assert "\n" not in message and ("allowed" in message)


@pytest.mark.parametrize("task", ["imagenet", "imagenet_toy", "shapes", "pathfinder", "coco", "coco_toy", "ade20k",
                                  "ade20k_toy", "occlusion"])
def test_every_shipped_task_validates(task):
    validate(compose([f"task={task}"]))


@pytest.mark.parametrize("experiment", ["demo", "cpu_study"])
@pytest.mark.parametrize("task", ["shapes", "pathfinder"])
def test_the_shipped_experiments_validate(task, experiment):
    validate(compose([f"task={task}", f"+experiment={experiment}"]))


def test_the_h2_study_validates():
    cfg = compose(["+experiment=h2_occlusion"])
    validate(cfg)
    assert (cfg.task.name, cfg.model.name, cfg.trainer.max_steps) == ("occlusion", "pico", 800)


@pytest.mark.parametrize("experiment", ["pretrain_demo", "paper_protocol"])
def test_the_chain_experiments_validate_in_every_grid(experiment):
    grids = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml").hydra.sweeper.grids
    for spec in grids:
        # a swept value (task: coco,ade20k) composes with its first choice
        cfg = compose([f"+experiment={experiment}", *(f"{key}={str(value).split(',')[0]}" for key, value in spec.items())])
        validate(cfg)
        upstream = cfg.task.get("backbone_from")
        assert upstream == spec.get("task.backbone_from")
        assert upstream is None or upstream == grids[0]["task"]  # the fine-tuning grids start from the first grid's task


def test_pathfinder_hardness_is_rejected_for_shapes_and_reaches_the_generator(tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    with pytest.raises(InstantiationException) as info:
        instantiate(compose(["task=shapes", "task.distractors=0"]).task)
    assert "task.distractors=0 is not allowed with task.generator=shapes" in str(info.value.__cause__)
    task = instantiate(compose(["task=pathfinder", "task.distractors=0", "task.curve_length=0.5",
                                "task.train_size=4", "task.val_size=2", f"paths.data={tmp_path}"]).task)
    task.prepare()
    meta = json.loads((task.root / "meta.json").read_text())["params"]
    assert meta["distractors"] == 0 and meta["curve_length"] == 0.5 and meta["curve_segments"] == 6


def test_embedded_sizes_must_split_into_equal_classes():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    with pytest.raises(InstantiationException) as info:
        instantiate(compose(["task=shapes", "task.val_size=15"]).task)
    assert "task.val_size=15 is not allowed: a positive multiple of task.num_classes=10" in str(info.value.__cause__)


def test_a_bad_setting_on_the_command_line_exits_2_with_one_line(tmp_path, tiny_args):
    proc = run_cli([*tiny_args, "trainer.max_steps=0"], tmp_path, check=False)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "Traceback" in line]
    assert len(errors) == 1 and "trainer.max_steps=0 is not allowed" in errors[0]
    assert not (tmp_path / "results" / "runs").exists()  # nothing written, nothing trained


def test_several_nodes_outside_slurm_exit_2_with_one_line(tmp_path, tiny_args):
    proc = run_cli([*tiny_args, "trainer.nodes=2"], tmp_path, check=False)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "Traceback" in line]
    assert len(errors) == 1 and ("trainer.nodes=2 is not allowed here: a job of several nodes runs only under "
                                 "hydra/launcher=slurm") in errors[0]
    assert not (tmp_path / "results" / "runs").exists()


@pytest.mark.parametrize("multirun", [False, True])
def test_an_output_folder_that_cannot_be_written_exits_2_with_one_line(tmp_path, tiny_args, multirun):
    import subprocess
    import sys

    from conftest import ROOT, clean_env

    blocked = tmp_path / "a-file"
    blocked.write_text("a file where the results folder should be")
    cmd = [sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []), *tiny_args, f"paths.results={blocked}",
           f"paths.data={tmp_path / 'data'}", "sweep=s"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    folder = blocked / "sweeps" / "s" / ("" if multirun else "0")
    assert lines == [f"ablate: cannot write the output folder {str(folder).rstrip('/')}: Not a directory "
                     "(set paths.results to a writable folder)"]


def test_help_lists_the_groups_and_every_setting_with_what_it_allows(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, clean_env

    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help", "model=pico", "task=occlusion"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "model: base, deit, femto, kobe, nano, pico, small, tiny" in lines  # no *_schema among the choices
    launchers = next(line for line in lines if line.startswith("hydra/launcher: ")).split(": ")[1].split(", ")
    assert {"local", "slurm"} <= set(launchers) and "grid" in next(line for line in lines if line.startswith("hydra/sweeper: "))
    after = lines[lines.index(next(line for line in lines if line.startswith("hydra/launcher: "))) + 1]
    assert after.startswith("  on a cluster use slurm: submitit_slurm")  # the stock one is marked, not offered as an equal
    assert not any("schema" in line for line in lines if ":" in line and not line.startswith(" "))
    (name,) = [line for line in lines if line.split()[:1] == ["name"] and "pico" in line]
    assert name.endswith("required; allowed: one of: pico, nano, femto, kobe, tiny, small, base")
    assert any(line.split()[:3] == ["dt_rank", "Optional[int]", "default"] for line in lines)
    assert any(line.split()[:1] == ["occluder_size"] for line in lines)  # the chosen task's own settings
    assert any(line.split()[:2] == ["dist_timeout_min", "float"] for line in lines)


def test_every_task_file_has_one_shape_and_the_trainer_recipe_is_its_own_group():
    for path in sorted((CONF_DIR / "task").glob("*.yaml")):
        text = path.read_text()
        assert "@package" not in text and "\ntrainer:" not in text, path.name
    coco = compose(["task=coco"]).trainer
    assert (coco.epochs, coco.sched, list(coco.decay_milestones), coco.lr) == (12, "multistep", [8, 11], 1e-4)
    assert compose(["task=ade20k"]).trainer.max_steps == 160000
    assert compose(["task=imagenet"]).trainer.epochs == 300  # no recipe file: the trainer defaults
    assert compose(["task=coco", "trainer.lr=3e-4"]).trainer.lr == 3e-4  # the command line wins


def test_a_launcher_can_tell_a_bad_setting_before_it_queues_the_job():
    from omegaconf import OmegaConf

    from ablate.config import setting_error

    error = setting_error(compose(["model=pico", "model.scan=spiral"]))
    assert str(error) == "model.scan='spiral' is not allowed: one of: cross, bidirectional, raster"
    assert setting_error(compose(["model=pico", "task=shapes"])) is None
    assert setting_error(OmegaConf.create({"steps": 3})) is None  # another app's config: not ablate's to judge


def test_ablate_help_lists_the_groups_without_torch_and_ablate_settings_prints_what_run_py_help_does(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, clean_env

    code = "import sys\nfrom ablate import cli\ncli.main(['--help'])\nprint('torch loaded:', 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "  model: base, deit, femto, kobe, nano, pico, small, tiny" in lines
    assert any(line.startswith("  hydra/launcher: ") and "slurm" in line for line in lines)
    assert lines[-1] == "torch loaded: False" and any(line.startswith("  settings ") for line in lines)
    settings = subprocess.run([sys.executable, "-m", "ablate.cli", "settings", "model=pico", "task=occlusion"],
                              cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert settings.returncode == 0, settings.stderr[-2000:]
    listed = settings.stdout.splitlines()
    assert any(line.split()[:1] == ["occluder_size"] for line in listed)
    (name,) = [line for line in listed if line.split()[:1] == ["name"] and "pico" in line]
    assert name.endswith("required; allowed: one of: pico, nano, femto, kobe, tiny, small, base")
    assert "$" not in settings.stdout
