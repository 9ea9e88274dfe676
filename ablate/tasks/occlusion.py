"""Occluded-line completion: per-pixel background / visible line / occluded line (the H2 task).

Data: `ablate.tasks.toydata.occlusion`, generated on first use into `data_root` with a fixed seed.
A pixel of a line under an opaque occluder shows only the occluder: to label it the model must carry
where the line enters and leaves the occluder across the occluder's width, which grows with the
input size. The primary metric is the IoU of the occluded class (percent); a model that predicts
background everywhere scores 0 (chance). The evaluation also gives that IoU per band of distance
from the nearest visible line pixel (`iou_occluded_d0_8`, `_d8_32`, `_d32_128`, `_d128_inf`, in
pixels of the evaluated input; a band no pixel falls in is left out), and `occluded_far_minus_near`
= IoU(d >= 8) - IoU(d < 8): the paired difference of that between arms is the arm x distance
interaction.

Training: cross-entropy weighted by median frequency balancing (class weight = median class
frequency / class frequency, over the training labels): the occluded class is ~1-2% of the pixels,
and unweighted it is never predicted. Horizontal flips only; the generator is the augmentation.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ablate.models import count_cost
from ablate.rules import at_least, channel_values, ordered_pair, size_pair, within
from ablate.tasks.base import DataError, SplitDatasetTask, TaskInfo
from ablate.tasks.heads import LightSegmenter, build_backbone, input_size
from ablate.tasks.toydata.occlusion import CLASSES, OCCLUDED, VISIBLE, generate_occlusion

# Distance bands (pixels from the nearest visible line pixel) of the per-band IoU; the last is open.
BANDS = (0, 8, 32, 128)
NEAR = 8  # occluded_far_minus_near splits at this distance
EVAL_BATCH = 16
WEIGHT_SAMPLE = 500  # training label maps read for the class frequencies


def band_names() -> list[str]:
    edges = [*BANDS, math.inf]
    return [f"iou_occluded_d{lo}_{'inf' if hi == math.inf else hi}" for lo, hi in zip(edges, edges[1:])]


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = sorted((root / "images" / split).glob("*.png"))
    labels = [root / "labels" / split / p.name for p in images]
    missing = [p for p in labels if not p.exists()]
    if not images or missing:
        what = f"{missing[0]} is missing" if missing else f"{root / 'images' / split} holds no *.png images"
        raise DataError(f"{what}; delete {root} and it is generated again")
    return list(zip(images, labels))


class OcclusionScenes(Dataset):
    """(normalised (3, H, W) float image, (H, W) int64 labels); training items flipped by (seed, epoch, index)."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], train: bool, hflip: float,
                 mean: Sequence[float], std: Sequence[float]):
        self.pairs, self.train, self.hflip = list(pairs), train, hflip
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255
        self.std = torch.tensor(std).view(3, 1, 1) * 255
        self.seed = self.epoch = 0

    def for_epoch(self, seed: int, epoch: int) -> "OcclusionScenes":
        view = copy.copy(self)
        view.seed, view.epoch = seed, epoch
        return view

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        pixels = TF.pil_to_tensor(Image.open(image_path).convert("RGB"))
        labels = torch.from_numpy(np.asarray(Image.open(label_path), dtype=np.int64).copy())
        if self.train and np.random.default_rng([self.seed, self.epoch, index]).random() < self.hflip:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        return (pixels.float() - self.mean) / self.std, labels


def median_frequency_weights(label_paths: Sequence[Path], num_classes: int) -> torch.Tensor:
    """SegNet's median frequency balancing over these label maps: median(freq) / freq per class."""
    counts = np.zeros(num_classes)
    for path in label_paths:
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=num_classes)[:num_classes]
    if (counts == 0).any():
        absent = [CLASSES[c] for c in np.flatnonzero(counts == 0)]
        raise DataError(f"no training pixel of class {', '.join(absent)} in {len(label_paths)} label maps "
                        f"(e.g. {label_paths[0]}); the generator settings leave nothing to learn")
    frequency = counts / counts.sum()
    return torch.tensor(np.median(frequency) / frequency, dtype=torch.float32)


class BandCounts:
    """Accumulates intersection / union of the occluded class, overall and per distance band."""

    def __init__(self) -> None:
        self.intersection = np.zeros(len(BANDS) + 2)  # the bands, then "near" (< NEAR) and "far" (>= NEAR)
        self.union = np.zeros(len(BANDS) + 2)

    def update(self, prediction: np.ndarray, labels: np.ndarray) -> None:
        """One image: (H, W) predicted and true class maps."""
        distance = ndimage.distance_transform_edt(labels != VISIBLE) if (labels == VISIBLE).any() \
            else np.full(labels.shape, np.inf)
        band = np.digitize(distance, BANDS[1:])  # 0..len(BANDS)-1
        predicted, true = prediction == OCCLUDED, labels == OCCLUDED
        both, either = predicted & true, predicted | true
        self.intersection[: len(BANDS)] += np.bincount(band[both], minlength=len(BANDS))
        self.union[: len(BANDS)] += np.bincount(band[either], minlength=len(BANDS))
        near = distance < NEAR
        for slot, where in ((len(BANDS), near), (len(BANDS) + 1, ~near)):
            self.intersection[slot] += (both & where).sum()
            self.union[slot] += (either & where).sum()

    def metrics(self) -> dict[str, float]:
        """Per-band IoU (percent) where the band has pixels, and far - near where both have."""
        iou = np.where(self.union > 0, 100.0 * self.intersection / np.maximum(self.union, 1), np.nan)
        out = {name: float(value) for name, value in zip(band_names(), iou) if not np.isnan(value)}
        near, far = iou[len(BANDS)], iou[len(BANDS) + 1]
        if not (np.isnan(near) or np.isnan(far)):
            out["occluded_far_minus_near"] = float(far - near)
        return out


class OcclusionSegmentation(SplitDatasetTask):
    """Occluded-line completion on the light head (ablate.tasks.heads.light); primary metric `iou_occluded`."""

    def __init__(
        self,
        name: str,
        data_root: str,
        image_size: Annotated[Sequence[int], size_pair()] = (96, 96),
        train_size: Annotated[int, at_least(1)] = 2000,
        val_size: Annotated[int, at_least(1)] = 200,
        data_seed: Annotated[int, at_least(0)] = 0,
        lines: Annotated[Sequence[int], ordered_pair(0, 64)] = (3, 6),
        occluders: Annotated[Sequence[int], ordered_pair(0, 64)] = (2, 4),
        occluder_size: Annotated[Sequence[float], ordered_pair(0, 1)] = (0.15, 0.4),  # x the shorter side
        line_width: Annotated[Sequence[float], ordered_pair(0, 16)] = (2.0, 3.0),  # pixels
        curvature: Annotated[float, within(0, 2)] = 0.5,  # control-point offset, x the half-length
        channels: Annotated[int, at_least(1)] = 32,
        hflip: Annotated[float, within(0, 1)] = 0.5,
        eval_workers: Annotated[int, at_least(0)] = 0,
        mean: Annotated[Sequence[float], channel_values(positive=False)] = (0.5, 0.5, 0.5),
        std: Annotated[Sequence[float], channel_values(positive=True)] = (0.25, 0.25, 0.25),
    ):
        self.info = TaskInfo(name=name, kind="segmentation", metric="iou_occluded", higher_is_better=True, chance=0.0)
        self.root = Path(data_root)
        self.image_size = input_size("image_size", image_size)
        self.generator_args = dict(
            image_size=self.image_size, train_size=train_size, val_size=val_size, seed=data_seed,
            lines=tuple(lines), occluders=tuple(occluders), occluder_size=tuple(occluder_size),
            line_width=tuple(line_width), curvature=curvature,
        )
        self.channels, self.hflip, self.eval_workers = channels, hflip, eval_workers
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.class_weights: torch.Tensor | None = None

    def planned_train_samples(self) -> int:
        return self.generator_args["train_size"]

    # -- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        folder = generate_occlusion(self.root, **self.generator_args)
        train_pairs, val_pairs = _pairs(folder, "train"), _pairs(folder, "val")
        self._train = OcclusionScenes(train_pairs, True, self.hflip, self.mean, self.std)
        self._val = OcclusionScenes(val_pairs, False, 0.0, self.mean, self.std)
        self.class_weights = median_frequency_weights([p for _, p in train_pairs[:WEIGHT_SAMPLE]], len(CLASSES))

    def epoch_dataset(self, seed: int, epoch: int) -> OcclusionScenes:
        return self._require_prepared()[0].for_epoch(seed, epoch)

    # -- model, loss ----------------------------------------------------------------------------
    def build_model(self, model_cfg: Mapping[str, Any]) -> nn.Module:
        return LightSegmenter(build_backbone(model_cfg, self.image_size), len(CLASSES), self.channels)

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        return F.cross_entropy(model(images).float(), labels, weight=self.class_weights.to(device))

    # -- evaluation, cost -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_shard(self, model: nn.Module, device: torch.device, rank: int = 0,
                       world: int = 1) -> tuple[torch.Tensor, "BandCounts"]:
        """This rank's pixel confusion matrix [true, predicted] and occluded-class band counts."""
        model.eval()
        confusion = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.int64)  # [true, predicted]
        bands = BandCounts()
        for images, labels in DataLoader(self.val_shard(rank, world), batch_size=EVAL_BATCH,
                                         num_workers=self.eval_workers):
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                prediction = model(images.to(device)).float().argmax(1).cpu()
            confusion += torch.bincount(labels.flatten() * len(CLASSES) + prediction.flatten(),
                                        minlength=len(CLASSES) ** 2).view(len(CLASSES), len(CLASSES))
            for predicted, true in zip(prediction.numpy(), labels.numpy()):
                bands.update(predicted, true)
        model.train()
        return confusion, bands

    def merge_metrics(self, shards: Sequence[tuple[torch.Tensor, "BandCounts"]]) -> dict[str, float]:
        confusion = sum(shard[0] for shard in shards)
        bands = BandCounts()
        for _, part in shards:
            bands.intersection += part.intersection
            bands.union += part.union
        true_positive = confusion.diag().double()
        union = confusion.sum(0).double() + confusion.sum(1).double() - true_positive
        iou = (100.0 * true_positive / union.clamp(min=1)).tolist()
        metrics = {f"iou_{name}": value for name, value in zip(CLASSES, iou)}
        metrics["mIoU"] = sum(iou) / len(iou)
        metrics["pixel_acc"] = 100.0 * float(true_positive.sum() / confusion.sum())
        return {**metrics, **bands.metrics()}

    def cost(self, model: nn.Module) -> dict[str, Any]:
        """Backbone at `image_size` (params, macs, macs_ssm), plus the whole segmenter (`segmenter_*`)."""
        cost = count_cost(model.features, input_size=self.image_size).as_dict()
        whole = count_cost(model, input_size=self.image_size)
        cost.update(segmenter_params=whole.params, segmenter_macs=whole.macs, segmenter_macs_ssm=whole.macs_ssm)
        return cost
