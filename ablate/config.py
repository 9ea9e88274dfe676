"""Typed configuration: the schemas behind conf/, registered in Hydra's ConfigStore.

Every YAML file in conf/ extends one of these dataclasses, so a wrong type (`model.ssm=maybe`) or an
unknown key (`trainer.lrr=1`) fails at composition with Hydra's own message, before any job starts.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

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


@dataclass
class ModelConfig:
    name: str = MISSING  # variant: pico, nano, femto, kobe, tiny, small, base
    ssm: bool = False  # the ablated switch: selective SSM on the c branch of every Gated CNN block
    scan: str = "cross"  # cross | bidirectional | raster (ignored when ssm=false)
    d_state: int = 16
    dt_rank: Optional[int] = None  # None -> ceil(C / 16)
    drop_path_rate: Optional[float] = None  # None -> the variant's value


@dataclass
class TrainerConfig:
    epochs: int = 300
    max_steps: Optional[int] = None  # when set, overrides epochs (optimizer steps)
    batch_size: int = 128
    lr: Optional[float] = None  # None -> lr_base * batch_size / lr_base_size (linear scaling)
    lr_base: float = 1e-3
    lr_base_size: int = 1024
    opt: str = "adamw"  # any timm optimizer name
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.05
    sched: str = "cosine"  # cosine | multistep (decay by decay_rate at decay_milestones) | poly
    warmup_epochs: float = 20.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    decay_milestones: List[float] = field(default_factory=list)  # epochs, for sched=multistep
    decay_rate: float = 0.1
    poly_power: float = 1.0
    grad_clip: Optional[float] = None  # max global grad norm
    precision: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 4
    eval_every: int = 0  # epochs between evaluations; 0 = only at the end
    checkpoint_every: int = 500  # optimizer steps between checkpoints
    log_every: int = 50  # steps between loss/lr log lines (and wandb points)
    progress: bool = True  # tqdm bar when stderr is a terminal


@dataclass
class TaskConfig:
    _target_: str = MISSING  # the Task class
    name: str = MISSING
    data_root: str = MISSING
    image_size: List[int] = field(default_factory=lambda: [224, 224])  # [H, W]: the sequence-length axis


@dataclass
class ClassificationTaskConfig(TaskConfig):
    """ImageFolder classification through timm's data pipeline (defaults: PAPER.md §6 / DeiT)."""

    num_classes: int = 1000
    train_split: str = "train"
    val_split: str = "val"
    eval_batch_size: int = 128
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    hflip: float = 0.5
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class EmbeddedClassificationTaskConfig(ClassificationTaskConfig):
    """A procedural dataset generated into data_root (ImageFolder layout) on first use."""

    generator: str = MISSING  # shapes | pathfinder
    train_size: int = 1000  # images in total
    val_size: int = 200
    data_seed: int = 0  # fixed across run seeds: seeds vary init and order, not the data


@dataclass
class DetectionTaskConfig(TaskConfig):
    """COCO instance detection/segmentation with Mask R-CNN + FPN on the four stages (torchvision parts).

    image_size [H, W] is the nominal input: MACs and seq_len are taken there; images are resized to
    shorter side H, longer side <= H * 5 // 3 (800 -> 1333).
    """

    num_classes: int = 80
    backbone_ckpt: Optional[str] = None  # classification checkpoint.pt of the same arm, or safetensors
    train_split: str = "train2017"
    val_split: str = "val2017"
    fpn_channels: int = 256
    roi_batch_size: int = 512
    hflip: float = 0.5
    eval_batch_size: int = 4
    eval_workers: int = 0
    cost_size: List[int] = field(default_factory=lambda: [800, 1280])  # whole-detector MACs at this size
    cost_proposals: int = 1000
    cost_mask_rois: int = 100
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class EmbeddedSceneFields:
    """Generator settings shared by the embedded COCO- and ADE20K-format tasks."""

    train_size: int = 64
    val_size: int = 16
    data_seed: int = 0
    source_size: List[int] = field(default_factory=lambda: [96, 128])  # [H, W] of the generated images
    max_objects: int = 3


@dataclass
class EmbeddedDetectionTaskConfig(DetectionTaskConfig, EmbeddedSceneFields):
    pass


@dataclass
class SegmentationTaskConfig(TaskConfig):
    """ADE20K semantic segmentation with UperNet (+ auxiliary FCN head) on the four stages.

    image_size [H, W] is the test scale (shorter side <= min, longer <= max); training crops are
    min(H, W) squared (512 x 512 at [512, 2048]).
    """

    num_classes: int = 150
    backbone_ckpt: Optional[str] = None
    channels: int = 512
    aux_channels: int = 256
    aux_weight: float = 0.4
    ratio_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True
    multiscale_eval: bool = True
    eval_workers: int = 0
    cost_size: List[int] = field(default_factory=lambda: [512, 2048])
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class EmbeddedSegmentationTaskConfig(SegmentationTaskConfig, EmbeddedSceneFields):
    pass


@dataclass
class LoggerConfig:
    kind: str = "none"  # wandb | none
    project: str = "ablate"
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; None -> WANDB_MODE, else offline without a key


@dataclass
class PathsConfig:
    root: str = "${cwd:}"
    results: str = "${paths.root}/results"
    data: str = "${paths.root}/data"


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: Any = MISSING  # one of the TaskConfig schemas, chosen by the task yaml's defaults
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    sweep: str = "${now:%Y-%m-%d_%H-%M-%S}"


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="model", name="schema", node=ModelConfig)
    store.store(group="trainer", name="schema", node=TrainerConfig)
    store.store(group="logger", name="schema", node=LoggerConfig)
    store.store(group="task", name="classification_schema", node=ClassificationTaskConfig)
    store.store(group="task", name="embedded_classification_schema", node=EmbeddedClassificationTaskConfig)
    store.store(group="task", name="detection_schema", node=DetectionTaskConfig)
    store.store(group="task", name="embedded_detection_schema", node=EmbeddedDetectionTaskConfig)
    store.store(group="task", name="segmentation_schema", node=SegmentationTaskConfig)
    store.store(group="task", name="embedded_segmentation_schema", node=EmbeddedSegmentationTaskConfig)


register_configs()


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose a job config outside of a Hydra run (plan, tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)
