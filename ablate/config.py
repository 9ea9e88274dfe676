"""Typed configuration: the schemas behind conf/, registered in Hydra's ConfigStore.

The trainer, logger and paths schemas are the dataclasses here; the model schemas are generated
from each model family's build signature (ablate.models.family) and the task schemas from each Task
class's constructor (TASK_SCHEMAS), so each setting is declared once.
Every YAML file in conf/ extends one of these dataclasses, so a wrong type (`model.ssm=maybe`) or an
unknown key (`trainer.lrr=1`) fails at composition with Hydra's own message, before any job starts.
Values Hydra cannot type-check (ranges, choices, lengths) carry a `Rule` in their field's metadata,
and `validate(cfg)` checks them, plus keys added with `+group.key=...` (which bypass Hydra's struct
check), before a job or `ablate plan` does anything: one line naming the key, the value and what is
allowed.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ablate.groups import CONF_DIR, group_lines
from ablate.rules import ConfigError, above, at_least, constructor_settings, is_number, one_of, rule, schema

# A file name may have at most this many bytes (Linux NAME_MAX); longer job folders fail to open.
MAX_DIRNAME_BYTES = 255
DIRNAME_HASH_CHARS = 12


def short_dirname(name: str) -> str:
    """`name` with every '/'-separated part of more than 255 bytes cut, plus a hash of the part.

    Deterministic, so a resumed sweep finds the same job folders; short names are unchanged.
    """
    return "/".join(_short_part(part) for part in name.split("/"))


def _short_part(part: str) -> str:
    raw = part.encode()
    if len(raw) <= MAX_DIRNAME_BYTES:
        return part
    digest = hashlib.sha256(raw).hexdigest()[:DIRNAME_HASH_CHARS]
    head = raw[: MAX_DIRNAME_BYTES - DIRNAME_HASH_CHARS - 1].decode(errors="ignore")  # whole characters
    return f"{head}-{digest}"


if not OmegaConf.has_resolver("cwd"):
    # Absolute launch directory, resolved where the config is resolved (launcher and job alike).
    OmegaConf.register_new_resolver("cwd", os.getcwd)
if not OmegaConf.has_resolver("short_dirname"):
    # hydra.sweep.subdir: job folders named by their overrides, cut to a legal length.
    OmegaConf.register_new_resolver("short_dirname", short_dirname)


def job_folder_exclusions() -> list[str]:
    """hydra.job.config.override_dirname.exclude_keys: records.NON_SEMANTIC_KEYS leaf by leaf (their one
    owner), except the tuning block: a trial's own keys must name its folder; only the study and
    storage do not. The launcher and sweeper choices never name a cell either."""
    from ablate.records import NON_SEMANTIC_KEYS

    leaves = {"paths": [f"paths.{f.name}" for f in fields(PathsConfig)], "tuning": ["tuning.study", "tuning.storage"]}
    return [leaf for key in NON_SEMANTIC_KEYS for leaf in leaves.get(key, [key])] + ["hydra/launcher", "hydra/sweeper"]


if not OmegaConf.has_resolver("job_folder_exclusions"):
    OmegaConf.register_new_resolver("job_folder_exclusions", job_folder_exclusions)
if not OmegaConf.has_resolver("run_help"):
    OmegaConf.register_new_resolver("run_help", lambda model, task: help_text(model, task))


SCHEDULES = ("cosine", "multistep", "poly")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RERUN_CHOICES = ("all", "stale")  # all: every cell again; stale: completed cells computed by other code


def _optimizers() -> tuple[str, ...]:
    from timm.optim import list_optimizers

    return tuple(list_optimizers())


def _tracking() -> Any:
    from ablate import tracking

    return tracking


def _device(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None


@dataclass
class TrainerConfig:
    epochs: int = field(default=300, metadata=at_least(1))
    max_steps: Optional[int] = field(default=None, metadata=at_least(1, optional=True))  # overrides epochs when set
    batch_size: int = field(default=128, metadata=at_least(1))
    lr: Optional[float] = field(default=None, metadata=above(0, optional=True))  # None -> linear scaling rule
    lr_base: float = field(default=1e-3, metadata=above(0))
    lr_base_size: int = field(default=1024, metadata=at_least(1))
    opt: str = field(default="adamw", metadata=one_of(_optimizers))  # any timm optimizer name
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999], metadata=rule(
        lambda v: len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"))
    eps: float = field(default=1e-8, metadata=above(0))
    weight_decay: float = field(default=0.05, metadata=at_least(0))
    sched: str = field(default="cosine", metadata=one_of(SCHEDULES))  # multistep: x decay_rate at decay_milestones
    warmup_epochs: float = field(default=20.0, metadata=at_least(0))
    warmup_lr: float = field(default=1e-6, metadata=at_least(0))
    min_lr: float = field(default=1e-5, metadata=at_least(0))
    decay_milestones: List[float] = field(default_factory=list, metadata=rule(  # epochs, for sched=multistep
        lambda v: all(is_number(m) and m > 0 for m in v) and list(v) == sorted(v), "increasing epochs > 0"))
    decay_rate: float = field(default=0.1, metadata=rule(lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]"))
    poly_power: float = field(default=1.0, metadata=above(0))
    grad_clip: Optional[float] = field(default=None, metadata=above(0, optional=True))  # max global grad norm
    precision: str = field(default="auto", metadata=one_of(PRECISIONS))  # auto: bf16/fp16 on GPU, fp32 on CPU
    device: str = field(default="auto", metadata=rule(_device, "auto, cpu, cuda or cuda:N"))
    # DDP ranks of one job (ablate/train/distributed.py): NCCL on GPUs, gloo on CPU. trainer.batch_size
    # stays the global batch, split across the ranks, so a cell's results do not depend on it.
    devices: int = field(default=1, metadata=at_least(1))
    # Nodes of one job, each running trainer.devices ranks: only under hydra/launcher=slurm.
    nodes: int = field(default=1, metadata=at_least(1))
    # Minutes a DDP collective waits for a peer rank before the job fails, naming the ranks that never
    # came (a hung rank). It must exceed the longest wait between collectives: a rank's share of an
    # evaluation, then rank 0's merge of the shares (COCO's evaluation), which the other ranks wait for.
    dist_timeout_min: float = field(default=10.0, metadata=above(0))
    num_workers: int = field(default=4, metadata=at_least(0))
    eval_every: int = field(default=0, metadata=at_least(0))  # epochs between evaluations; 0 = only at the end
    checkpoint_every: int = field(default=500, metadata=at_least(1))  # optimizer steps between checkpoints
    log_every: int = field(default=50, metadata=at_least(1))  # steps between loss/lr log lines (and wandb points)
    progress: bool = True  # tqdm bar when stderr is a terminal


@dataclass
class LoggerConfig:
    kind: str = field(default="none", metadata=one_of(lambda: _tracking().KINDS))
    project: str = "ablate"
    entity: Optional[str] = None
    mode: Optional[str] = field(default=None, metadata=one_of(lambda: _tracking().MODES, optional=True))
    # mode None -> WANDB_MODE, else offline without a key


@dataclass
class PathsConfig:
    root: str = "${cwd:}"
    results: str = "${paths.root}/results"
    data: str = "${paths.root}/data"
    reports: str = "${paths.root}/reports"  # the end-of-multirun report goes to <reports>/<sweep>/


@dataclass
class Config:
    model: Any = MISSING  # the model family's schema (ablate.models.family), chosen by the model yaml's defaults
    task: Any = MISSING  # one of the TaskConfig schemas, chosen by the task yaml's defaults
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    sweep: str = "${now:%Y-%m-%d_%H-%M-%S}"


# conf/task's schemas: a task file's defaults name one, and it is the constructor's signature of its
# Task class (settings, types, defaults and Rules declared there, once).
TASK_SCHEMAS = {
    "classification_schema": "ablate.tasks.classification.ImageFolderClassification",
    "embedded_classification_schema": "ablate.tasks.classification.EmbeddedClassification",
    "detection_schema": "ablate.tasks.detection.CocoDetection",
    "embedded_detection_schema": "ablate.tasks.detection.EmbeddedCocoDetection",
    "segmentation_schema": "ablate.tasks.segmentation.ADE20KSegmentation",
    "embedded_segmentation_schema": "ablate.tasks.segmentation.EmbeddedADE20K",
    "occlusion_schema": "ablate.tasks.occlusion.OcclusionSegmentation",
}


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="trainer", name="schema", node=TrainerConfig)
    store.store(group="logger", name="schema", node=LoggerConfig)
    for name, target in TASK_SCHEMAS.items():  # each generated from the Task class's constructor
        module, _, cls = target.rpartition(".")
        task = getattr(importlib.import_module(module), cls)
        store.store(group="task", name=name, node=schema(f"{cls}Config", [
            ("_target_", str, MISSING, {}), *constructor_settings(task)]))
    from ablate.models import families  # each family's schema comes from its build signature

    for family in families():
        store.store(group="model", name=f"{family.name}_schema", node=family.schema)


register_configs()

VALIDATED_GROUPS = ("model", "trainer", "task", "logger")


def settings_main(argv: list[str]) -> int:
    """`ablate settings [model=NAME] [task=NAME] [...]`: what `run.py --help` prints for those choices."""
    if any(arg in ("-h", "--help") for arg in argv):
        print("usage: ablate settings [model=NAME] [task=NAME] [other overrides]: the groups, and each setting of the "
              "chosen model family, trainer and task with its type, default and allowed values")
        return 0
    cfg = compose(argv)
    text = help_text(cfg.model.name, cfg.task._target_).replace("$$", "$")
    print(text.replace("$FLAGS_HELP", "Hydra's own flags (--multirun, --cfg, ...): python run.py --help"))
    return 0


def help_text(model_name: str, task_target: str) -> str:
    """`run.py --help` (hydra.help.template): the choices of every group, and each setting of the chosen
    model family, trainer and task with its type, default and what it allows. `$` is doubled: Hydra
    substitutes `$FLAGS_HELP` and the like in the template."""
    from ablate.models import family_of

    lines = ["run.py: one job per sweep cell, e.g.", "  python run.py -m model=pico model.ssm=true,false task=shapes seed=0,1,2",
             "", "== Groups (group=option) =="]
    lines += group_lines()
    family = family_of(model_name)
    module, _, cls = task_target.rpartition(".")
    task = getattr(importlib.import_module(module), cls)
    for title, node in ((f"model.<key> ({family.name} family)", family.schema), ("trainer.<key>", TrainerConfig),
                        (f"task.<key> ({cls})", schema(f"{cls}Config", constructor_settings(task)))):
        lines += ["", f"== {title} =="] + _setting_lines(node)
    lines += ["", "Hypotheses: conf/hypothesis/*.yaml. The composed config: python run.py --cfg job", "",
              "== Flags ==", "FLAGS_HELP_PLACEHOLDER"]
    return "\n".join(lines).replace("$", "$$").replace("FLAGS_HELP_PLACEHOLDER", "$FLAGS_HELP")


def _setting_lines(node: type) -> list[str]:
    """One line per field of a settings dataclass: name, type, default, what it allows."""
    out = []
    for spec in fields(node):
        default = spec.default_factory() if spec.default_factory is not MISSING_FIELD else spec.default
        check = spec.metadata.get("rule")
        kind = spec.type.__name__ if isinstance(spec.type, type) else str(spec.type).replace("typing.", "")
        shown = "required" if default is MISSING or default is MISSING_FIELD else f"default {default!r}"
        out.append(f"  {spec.name:<20} {kind:<16} {shown}" + (f"; allowed: {check.allowed()}" if check else ""))
    return out


def setting_error(cfg: DictConfig) -> ConfigError | None:
    """The ConfigError a job of `cfg` would stop at (None when valid, or for an app that is not ablate's,
    without its validated groups): what a launcher checks before it queues the job."""
    if not all(group in cfg for group in VALIDATED_GROUPS):
        return None
    try:
        validate(cfg)
    except ConfigError as exc:
        return exc
    return None


def validate(cfg: DictConfig) -> None:
    """Check every Rule and reject keys the group's schema does not have; raise ConfigError (one line)."""
    rerun = cfg.get("rerun")
    if rerun is not None and rerun not in RERUN_CHOICES:
        raise ConfigError(f"rerun={rerun!r} is not allowed: one of: {', '.join(RERUN_CHOICES)} (or leave it unset)")
    for group in VALIDATED_GROUPS:
        node = cfg[group]
        schema = OmegaConf.get_type(node)
        if not is_dataclass(schema):
            continue
        known = {f.name: f for f in fields(schema)}
        unset = [key for key in node if OmegaConf.is_missing(node, key)]
        if unset:  # e.g. model=mambaout_schema: a schema, which names no model
            choices = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            raise ConfigError(f"{group}.{unset[0]} has no value: the chosen {group} file sets none (a *_schema is a "
                              f"schema, not a {group}); allowed: {group}= one of: {', '.join(choices)}")
        for key in node:
            if key not in known:
                raise ConfigError(f"{group}.{key} is not a setting of this {group}; allowed keys: "
                                  f"{', '.join(sorted(known))}")
        for name, spec in known.items():
            check = spec.metadata.get("rule")
            if check is None:
                continue
            value = node[name]
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            if not check.test(value):
                raise ConfigError(f"{group}.{name}={value!r} is not allowed: {check.allowed()}")
    trainer = cfg.trainer
    if trainer.batch_size % (trainer.devices * trainer.nodes):  # checked here, before any rank starts
        ranks = (f"trainer.devices={trainer.devices}" if trainer.nodes == 1 else
                 f"trainer.devices={trainer.devices} x trainer.nodes={trainer.nodes}")
        raise ConfigError(f"trainer.batch_size={trainer.batch_size} is not allowed with {ranks}: a multiple of "
                          f"{trainer.devices * trainer.nodes} (each rank takes an equal share of the global batch)")


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose a job config outside of a Hydra run (plan, tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)
