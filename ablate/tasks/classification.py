"""Image classification on an ImageFolder tree through timm's data pipeline.

`ImageFolderClassification` reads real ImageNet (or any ImageFolder tree) at `data_root`;
`EmbeddedClassification` first generates a procedural dataset (ablate.tasks.toydata) into the same
layout, so both go through exactly the same loading, augmentation and evaluation code.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import torch
from PIL import Image, ImageOps
from timm.data import Mixup, create_dataset, create_transform
from timm.data.auto_augment import RandAugment
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ablate.rules import (ConfigError, above, at_least, channel_values, hw_pair, is_number, ordered_pair, rule,
                          size_pair, within)
from ablate.models import count_cost, family_of
from ablate.tasks.base import DataError, SplitDatasetTask, TaskInfo

log = logging.getLogger("ablate.tasks")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def class_folders(root: Path, split: str) -> list[str]:
    """Sorted class folder names of `root/split`; raise DataError (one line) if the layout is wrong."""
    split_dir = root / split
    hint = "point task.data_root at a folder holding train/<class>/*.JPEG and val/<class>/*.JPEG"
    if not root.is_dir():
        raise DataError(f"task.data_root={root} does not exist; {hint}")
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} is missing: expected an ImageFolder split there; {hint}")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders: expected {split}/<class>/<image>; {hint}")
    for name in classes:
        with os.scandir(split_dir / name) as entries:
            if not any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries):
                raise DataError(f"{split_dir / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); {hint}")
    return classes


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, keeping 0 bits as a black image (what the DeiT recipe trained with).

    RandAugment's PosterizeIncreasing asks for 4 - int(4 * m / 10) bits, so a magnitude drawn at the
    clip value m = 10 (m9 with mstd0.5 reaches it ~2% of draws) asks for 0 bits. Pillow < 13 turned
    that into an all-black image; Pillow 13 raises `bits must be between or equal to 1 and 8`.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off: zeros in every band
    return ImageOps.posterize(img, bits_to_keep)


def train_transform(size: tuple[int, int, int], **augment: Any) -> Any:
    """timm's training transform for `augment`, with RandAugment's posterize ops made total (see posterize)."""
    transform = create_transform(size, is_training=True, **augment)
    for step in getattr(transform, "transforms", ()):
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize
    return transform


class ImageFiles(Dataset):
    """(image, target, replaced) from an ImageFolder file list, through `transform`.

    A file that does not decode is never skipped silently. In training (`substitute`) it is replaced
    by the next decodable file, as timm's ImageDataset does, and `replaced` is its index (else -1),
    so the task can count it in the main process whatever the number of workers. In evaluation a
    corrupt file is a DataError: dropping a validation image would change the metric.
    """

    MAX_CONSECUTIVE = 50

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Any, substitute: bool):
        self.samples, self.transform, self.substitute = list(samples), transform, substitute

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> Image.Image:
        with Image.open(self.samples[index][0]) as img:
            return img.convert("RGB")  # decodes every pixel, so a truncated file fails here

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        replaced = -1
        for attempt in range(self.MAX_CONSECUTIVE):
            try:
                img = self._load(index)
                break
            except (OSError, ValueError, SyntaxError) as exc:  # PIL's decode errors
                path = self.samples[index][0]
                if not self.substitute:
                    raise DataError(f"{path}: corrupt validation image ({exc}); fix or remove it, "
                                    "since a skipped validation image changes the metric") from None
                replaced = index if replaced < 0 else replaced
                index = (index + 1) % len(self.samples)
        else:
            raise DataError(f"{self.MAX_CONSECUTIVE} consecutive training images fail to decode from "
                            f"{self.samples[replaced][0]} on; check the dataset")
        return self.transform(img), self.samples[index][1], replaced


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")
GENERATORS = ("shapes", "pathfinder", "imagenet_toy")  # the embedded datasets (ablate/tasks/toydata)


def _augment_policy(v: Any) -> bool:
    """A policy string timm's create_transform accepts (rand-..., augmix-..., or an AutoAugment name)."""
    from timm.data import auto_augment as aa

    if not isinstance(v, str):
        return False
    build = (aa.rand_augment_transform if v.startswith("rand") else
             aa.augment_and_mix_transform if v.startswith("augmix") else aa.auto_augment_transform)
    try:
        build(v, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError, IndexError):
        return False
    return True


class ImageFolderClassification(SplitDatasetTask):
    """Classification with the DeiT recipe's data pipeline (docs/study.md §6), top-1/top-5 evaluation."""

    def __init__(
        self,
        name: str,
        data_root: str,
        image_size: Annotated[Sequence[int], size_pair()],  # [H, W]: the sequence-length axis
        num_classes: Annotated[int, at_least(2)] = 1000,
        train_split: str = "train",
        val_split: str = "val",
        eval_batch_size: Annotated[int, at_least(1)] = 128,
        eval_workers: Annotated[int, at_least(0)] = 0,  # loader processes for evaluation (and its throughput)
        auto_augment: Annotated[str | None, rule(
            _augment_policy, "a timm policy: rand-m<M>[-mstd<S>][-inc1]..., augmix-..., original, originalr, v0, "
            "v0r or 3a", optional=True)] = "rand-m9-mstd0.5-inc1",
        color_jitter: Annotated[float, at_least(0)] = 0.4,
        hflip: Annotated[float, within(0, 1)] = 0.5,  # probability
        scale: Annotated[Sequence[float], ordered_pair(0, 1)] = (0.08, 1.0),  # crop area
        reprob: Annotated[float, within(0, 1)] = 0.25,
        mixup: Annotated[float, at_least(0)] = 0.8,  # Beta(alpha, alpha); 0 = off
        cutmix: Annotated[float, at_least(0)] = 1.0,
        label_smoothing: Annotated[float, rule(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")] = 0.1,
        crop_pct: Annotated[float, rule(lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]")] = 1.0,
        interpolation: Literal[INTERPOLATIONS] = "bicubic",
        mean: Annotated[Sequence[float], channel_values(positive=False)] = (0.485, 0.456, 0.406),
        std: Annotated[Sequence[float], channel_values(positive=True)] = (0.229, 0.224, 0.225),
    ):
        image_size = hw_pair("task.image_size", list(image_size))
        self.info = TaskInfo(name=name, kind="classification", metric="top1", higher_is_better=True,
                             chance=100.0 / num_classes)
        self.root = Path(data_root)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_classes = num_classes
        self.splits = (train_split, val_split)
        self.eval_batch_size, self.eval_workers = eval_batch_size, eval_workers
        self.augment = dict(
            auto_augment=auto_augment, color_jitter=color_jitter, hflip=hflip, scale=tuple(scale),
            re_prob=reprob, interpolation=interpolation, mean=tuple(mean), std=tuple(std),
        )
        self.crop_pct = crop_pct
        self.label_smoothing = label_smoothing
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            # timm's Mixup draws from numpy's global RNG, which the loop seeds identically for both arms.
            self.mixup = Mixup(
                mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes
            )

    # -- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        train_classes = class_folders(self.root, self.splits[0])
        val_classes = class_folders(self.root, self.splits[1])
        if train_classes != val_classes:
            only = sorted(set(train_classes) ^ set(val_classes))[:3]
            raise DataError(
                f"{self.root}: train/ and val/ class folders differ (e.g. {', '.join(only)}); both splits need the same classes"
            )
        if len(train_classes) != self.num_classes:
            raise DataError(
                f"task.num_classes={self.num_classes} but {self.root / self.splits[0]} has "
                f"{len(train_classes)} class folders; set task.num_classes={len(train_classes)} or fix the data"
            )
        size = (3, *self.image_size)
        self._train = ImageFiles(self._files(self.splits[0]), train_transform(size, **self.augment), substitute=True)
        self._val = ImageFiles(self._files(self.splits[1]), create_transform(
            size, is_training=False, crop_pct=self.crop_pct, interpolation=self.augment["interpolation"],
            mean=self.augment["mean"], std=self.augment["std"],
        ), substitute=False)
        self.corrupt_train_images: set[int] = set()

    def _files(self, split: str) -> list[tuple[str, int]]:
        """timm's ImageFolder listing of one split: (path, class index), classes sorted by name."""
        return create_dataset("", root=str(self.root), split=split).reader.samples

    def data_summary(self) -> dict[str, int]:
        train, val = self._require_prepared()
        return {"train_images": len(train), "val_images": len(val),
                "corrupt_train_images": len(self.corrupt_train_images)}

    # -- model, loss, evaluation -----------------------------------------------------------------
    def build_model(self, model_cfg: Mapping[str, Any]) -> nn.Module:
        return family_of(model_cfg["name"]).build(**model_cfg, num_classes=self.num_classes, image_size=tuple(self.image_size))

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, targets, replaced = batch
        bad = replaced[replaced >= 0].tolist()
        if bad:
            self.corrupt_train_images.update(bad)
            log.warning("%d corrupt training image(s) replaced by the next one, e.g. %s (%d distinct so far)",
                        len(bad), self._train.samples[bad[0]][0], len(self.corrupt_train_images))
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)  # targets become soft (B, classes)
            return SoftTargetCrossEntropy()(model(images), targets)
        if self.label_smoothing > 0:
            return LabelSmoothingCrossEntropy(self.label_smoothing)(model(images), targets)
        return nn.functional.cross_entropy(model(images), targets)

    @torch.no_grad()
    def evaluate_shard(self, model: nn.Module, device: torch.device, rank: int = 0, world: int = 1) -> dict[str, float]:
        """Counts over this rank's samples: {correct1, correctk, total, loss_sum}."""
        model.eval()
        loader = DataLoader(self.val_shard(rank, world), batch_size=self.eval_batch_size, shuffle=False,
                            num_workers=self.eval_workers)
        counts = dict.fromkeys(("correct1", "correctk", "total", "loss_sum"), 0.0)
        for images, targets, _ in loader:
            images, targets = images.to(device), targets.to(device)
            logits = model(images).float()
            counts["loss_sum"] += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            hits = logits.topk(self._top_k, dim=1).indices.eq(targets[:, None])  # (B, k)
            counts["correct1"] += hits[:, 0].sum().item()
            counts["correctk"] += hits.any(dim=1).sum().item()
            counts["total"] += targets.numel()
        model.train()
        return counts

    def merge_metrics(self, shards: Sequence[dict[str, float]]) -> dict[str, float]:
        total = {key: sum(shard[key] for shard in shards) for key in shards[0]}
        metrics = {"top1": 100.0 * total["correct1"] / total["total"], "loss": total["loss_sum"] / total["total"]}
        if self._top_k == 5:
            metrics["top5"] = 100.0 * total["correctk"] / total["total"]
        return metrics

    @property
    def _top_k(self) -> int:
        return 5 if self.num_classes > 5 else 1  # top-5 says nothing about a task with <= 5 classes

    def cost(self, model: nn.Module) -> dict[str, Any]:
        return count_cost(model, input_size=self.image_size).as_dict()


class EmbeddedClassification(ImageFolderClassification):
    """A procedural dataset (toydata: shapes, pathfinder, imagenet_toy) generated on first use, then cached."""

    GENERATORS = GENERATORS

    def __init__(
        self,
        generator: Literal[GENERATORS],
        train_size: Annotated[int, at_least(1)] = 1000,  # images in total
        val_size: Annotated[int, at_least(1)] = 200,
        data_seed: Annotated[int, at_least(0)] = 0,  # fixed across run seeds: vary init and order, not data
        # pathfinder only (null for shapes): curves besides the two main ones (null: side / 16), and
        # curve length in units of the image side (null: 1.0). Both keep their meaning at every size.
        distractors: Annotated[int | None, at_least(0, optional=True)] = None,
        curve_length: Annotated[float | None, above(0, optional=True)] = None,
        **kwargs: Any,
    ):
        if generator not in self.GENERATORS:
            raise ValueError(f"task.generator={generator!r} is not known; choose from: {', '.join(self.GENERATORS)}")
        super().__init__(**kwargs)
        for key, size in (("train_size", train_size), ("val_size", val_size)):
            # The generators make size // num_classes images per class: anything else would shrink or grow silently.
            if size < self.num_classes or size % self.num_classes:
                raise ConfigError(f"task.{key}={size} is not allowed: a positive multiple of "
                                  f"task.num_classes={self.num_classes} (the generator makes equal classes)")
        for key, value in (("distractors", distractors), ("curve_length", curve_length)):
            if generator != "pathfinder" and value is not None:
                raise ConfigError(f"task.{key}={value} is not allowed with task.generator={generator}: "
                                  f"a pathfinder hardness setting (leave it null)")
        self.generator = generator
        self.sizes = (train_size, val_size)
        self.data_seed = data_seed
        # pathfinder hardness; None -> the generator's default (side/16 distractors, curves 1 side long)
        self.hardness = {k: v for k, v in (("distractors", distractors), ("curve_length", curve_length))
                         if v is not None}

    def planned_train_samples(self) -> int:
        return self.sizes[0]  # a multiple of num_classes (checked above): exactly what is generated

    def prepare(self) -> None:
        from ablate.tasks import toydata

        train_size, val_size = self.sizes
        if self.generator in ("shapes", "imagenet_toy"):
            generate = toydata.generate_shapes if self.generator == "shapes" else toydata.generate_imagenet_toy
            per_class = (train_size // self.num_classes, val_size // self.num_classes)
            self.root = generate(self.root, self.image_size, per_class[0], per_class[1], seed=self.data_seed,
                                 num_classes=self.num_classes)
        else:
            self.root = toydata.generate_pathfinder(
                self.root, self.image_size, train_size, val_size, seed=self.data_seed, **self.hardness)
        super().prepare()
