"""ADE20K semantic segmentation: UperNet (+ auxiliary FCN head) on the Gated CNN backbone.

Data: the ADEChallengeData2016 layout at `data_root` (images/{training,validation}/*.jpg,
annotations/{training,validation}/*.png); labels 1..150 become classes 0..149 and 0 ("other")
becomes the ignore index 255. `EmbeddedADE20K` first generates `ade20k-toy`
(ablate.tasks.toydata.ade20k) in that same layout. Evaluation: mIoU and pixel accuracy at the
original label resolution, single-scale and multi-scale + flip, through torchmetrics.

Input size, i.e. the sequence-length axis. `image_size` = [H, W] (512x2048 in the paper: 4096
tokens at stride 16, docs/study.md §2) is mmsegmentation's test scale: an image is resized, keeping its
aspect ratio, as large as fits shorter side <= min(H, W) and longer side <= max(H, W); that is the
single-scale evaluation input, and MACs are counted at H x W. Training follows the recipe scaled
the same way: random rescale of that size by a ratio in [0.5, 2.0], random min(H, W)-square crop
(512x512), flip, photometric distortion.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ablate.models import count_cost
from ablate.rules import at_least, channel_values, is_number, ordered_pair, rule, size_pair, within
from ablate.tasks.base import DataError, GeneratedScenesMixin, SplitDatasetTask, TaskInfo
from ablate.tasks.heads import UperNet, backbone_source, build_backbone, input_size

IGNORE = 255
SPLIT_FOLDERS = ("training", "validation")
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # multi-scale evaluation, times the test scale
PAD_TO = 32  # the backbone's total stride


# -- data ----------------------------------------------------------------------------------------
def ade_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Sorted (image, annotation) paths of one split; DataError (one line) on a broken layout."""
    hint = "point task.data_root at an ADEChallengeData2016 folder holding images/ and annotations/"
    if not root.is_dir():
        raise DataError(f"task.data_root={root} does not exist; {hint}")
    image_dir, label_dir = root / "images" / split, root / "annotations" / split
    for folder, what in ((image_dir, "*.jpg images"), (label_dir, "*.png annotations")):
        if not folder.is_dir():
            raise DataError(f"{folder} is missing: expected the {split} {what} there; {hint}")
    images = {p.stem: p for p in image_dir.glob("*.jpg")}
    labels = {p.stem: p for p in label_dir.glob("*.png")}
    if not images:
        raise DataError(f"{image_dir} holds no *.jpg images; {hint}")
    for have, lack, lack_dir in ((images, labels, label_dir), (labels, images, image_dir)):
        orphans = sorted(set(have) - set(lack))
        if orphans:
            kind = "annotation" if lack is labels else "image"
            raise DataError(
                f"{lack_dir}: {len(orphans)} {kind}s are absent (e.g. {orphans[0]}); "
                f"images and annotations pair up by name"
            )
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def keep_ratio_size(height: int, width: int, short: float, long: float) -> tuple[int, int]:
    """(h, w) of the largest aspect-preserving resize with shorter side <= short, longer <= long."""
    scale = min(long / max(height, width), short / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def photometric_distortion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmsegmentation's PhotoMetricDistortion ranges on a uint8 (3, H, W) image, each step with p=1/2:
    brightness +-32 grey levels, contrast x[0.5, 1.5], saturation x[0.5, 1.5], hue +-18 degrees."""
    if rng.random() < 0.5:
        image = (image.float() + rng.uniform(-32, 32)).clamp_(0, 255).to(torch.uint8)
    if rng.random() < 0.5:
        image = TF.adjust_contrast(image, rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        image = TF.adjust_saturation(image, rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        image = TF.adjust_hue(image, rng.uniform(-18, 18) / 360)
    return image


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 255] float (..., 3, H, W) -> float normalised with ImageNet statistics."""
    mean_t = torch.tensor(mean, device=image.device).view(3, 1, 1) * 255
    std_t = torch.tensor(std, device=image.device).view(3, 1, 1) * 255
    return (image.float() - mean_t) / std_t


class ADE20KScenes(Dataset):
    """ADE20K pairs. Training items: a normalised (3, c, c) crop and its (c, c) int64 labels, c the
    crop side, augmentation fixed by (seed, epoch, index). Evaluation items: the original uint8
    (3, H, W) image and its (H, W) int64 labels. Labels: class 0..num_classes-1 or IGNORE."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        num_classes: int,
        train: bool,
        scale: tuple[int, int] = (512, 2048),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ):
        self.pairs, self.num_classes, self.train = list(pairs), num_classes, train
        self.scale = scale  # (shorter, longer) side limits of the base resize
        self.crop = scale[0]
        self.ratio_range, self.cat_max_ratio = tuple(ratio_range), cat_max_ratio
        self.hflip, self.photometric = hflip, photometric
        self.mean, self.std = mean, std
        self.seed = self.epoch = 0

    def for_epoch(self, seed: int, epoch: int) -> "ADE20KScenes":
        """A view whose augmentation draws are those of (seed, epoch)."""
        view = copy.copy(self)
        view.seed, view.epoch = seed, epoch
        return view

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The RGB image and its labels mapped to 0..num_classes-1 / IGNORE."""
        image_path, label_path = self.pairs[index]
        image = Image.open(image_path).convert("RGB")
        label_image = Image.open(label_path)
        if label_image.mode not in ("L", "P"):
            raise DataError(f"{label_path} has PIL mode {label_image.mode}; expected an 8-bit label PNG (mode L)")
        if label_image.size != image.size:
            raise DataError(
                f"{label_path} is {label_image.size[0]}x{label_image.size[1]} but {image_path.name} is "
                f"{image.size[0]}x{image.size[1]} (WxH); an annotation must have its image's size"
            )
        raw = np.asarray(label_image)
        if raw.max() > self.num_classes:
            raise DataError(
                f"{label_path} holds label {raw.max()} > task.num_classes={self.num_classes}; "
                f"ADE20K labels are 0 (unlabelled) and 1..num_classes"
            )
        labels = raw.astype(np.int64) - 1  # 1..K -> 0..K-1
        labels[raw == 0] = IGNORE
        return image, labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.read(index)
        if not self.train:
            return TF.pil_to_tensor(image), torch.from_numpy(labels)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        ratio = rng.uniform(*self.ratio_range)
        h, w = keep_ratio_size(image.height, image.width, self.scale[0] * ratio, self.scale[1] * ratio)
        image = image.resize((w, h), Image.BILINEAR)
        labels = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.NEAREST))
        top, left = self._crop_origin(labels, rng)
        labels = torch.from_numpy(labels[top : top + self.crop, left : left + self.crop].astype(np.int64))
        pixels = TF.pil_to_tensor(image)[:, top : top + self.crop, left : left + self.crop]
        if rng.random() < self.hflip:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        if self.photometric:
            pixels = photometric_distortion(pixels, rng)
        pad = (0, self.crop - labels.shape[1], 0, self.crop - labels.shape[0])  # right, bottom
        return F.pad(normalize(pixels, self.mean, self.std), pad), F.pad(labels, pad, value=IGNORE)

    def _crop_origin(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """A random crop corner; up to 10 tries for a crop where no class covers >= cat_max_ratio."""
        height, width = labels.shape
        for _ in range(10):
            top = int(rng.integers(0, max(height - self.crop, 0) + 1))
            left = int(rng.integers(0, max(width - self.crop, 0) + 1))
            window = labels[top : top + self.crop, left : left + self.crop]
            _, counts = np.unique(window[window != IGNORE], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left


# -- the task ------------------------------------------------------------------------------------
class ADE20KSegmentation(SplitDatasetTask):
    """UperNet 160k on ADE20K (docs/study.md §6); primary metric single-scale mIoU (percent)."""

    def __init__(
        self,
        name: str,
        data_root: str,
        image_size: Annotated[Sequence[int], size_pair()] = (512, 2048),  # test scale; crops min(H, W) squared
        num_classes: Annotated[int, at_least(1)] = 150,
        backbone_ckpt: str | None = None,  # classification checkpoint.pt of the same arm, or safetensors
        backbone_from: str | None = None,  # a classification task: start from its cell of this arm and seed (ablate.chain)
        channels: Annotated[int, at_least(1)] = 512,
        aux_channels: Annotated[int, at_least(1)] = 256,
        aux_weight: Annotated[float, at_least(0)] = 0.4,
        ratio_range: Annotated[Sequence[float], ordered_pair(0, float("inf"))] = (0.5, 2.0),
        cat_max_ratio: Annotated[float, rule(lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]")] = 0.75,
        hflip: Annotated[float, within(0, 1)] = 0.5,
        photometric: bool = True,
        multiscale_eval: bool = True,
        eval_workers: Annotated[int, at_least(0)] = 0,
        cost_size: Annotated[Sequence[int], size_pair()] = (512, 2048),
        mean: Annotated[Sequence[float], channel_values(positive=False)] = IMAGENET_DEFAULT_MEAN,
        std: Annotated[Sequence[float], channel_values(positive=True)] = IMAGENET_DEFAULT_STD,
    ):
        if not 1 < num_classes < IGNORE:
            raise ValueError(f"task.num_classes={num_classes} is not allowed; expected 2..{IGNORE - 1}")
        self.info = TaskInfo(name=name, kind="segmentation", metric="mIoU", higher_is_better=True)
        self.root = Path(data_root)
        self.image_size = input_size("image_size", image_size)
        self.scale = (min(self.image_size), max(self.image_size))  # (shorter, longer) side limits
        self.num_classes = num_classes
        self.backbone_ckpt = backbone_source(backbone_ckpt, backbone_from)
        self.channels, self.aux_channels, self.aux_weight = channels, aux_channels, aux_weight
        self.augment = dict(
            ratio_range=tuple(ratio_range), cat_max_ratio=cat_max_ratio, hflip=hflip, photometric=photometric
        )
        self.multiscale_eval = multiscale_eval
        self.eval_workers = eval_workers
        self.cost_size = input_size("cost_size", cost_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    # -- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        train_pairs, val_pairs = (ade_pairs(self.root, split) for split in SPLIT_FOLDERS)
        common = dict(num_classes=self.num_classes, scale=self.scale, mean=self.mean, std=self.std)
        self._train = ADE20KScenes(train_pairs, train=True, **common, **self.augment)
        self._val = ADE20KScenes(val_pairs, train=False, **common)

    def epoch_dataset(self, seed: int, epoch: int) -> ADE20KScenes:
        return self._require_prepared()[0].for_epoch(seed, epoch)  # crops/flips drawn from (seed, epoch, index)

    # -- model, loss ----------------------------------------------------------------------------
    def build_model(self, model_cfg: Mapping[str, Any]) -> nn.Module:
        features = build_backbone(model_cfg, self.image_size, self.backbone_ckpt)
        return UperNet(features, self.num_classes, self.channels, self.aux_channels)

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        logits, aux_logits = model(images, with_aux=True)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
        return loss + self.aux_weight * F.cross_entropy(aux_logits.float(), labels, ignore_index=IGNORE)

    # -- evaluation, cost -----------------------------------------------------------------------
    def predict(self, model: nn.Module, image: torch.Tensor, ratios: Sequence[float], flip: bool) -> torch.Tensor:
        """Class probabilities (classes, H, W) of a uint8 (3, H, W) image, summed over test-scale
        `ratios` (and their horizontal flips), each resized back to the image's size."""
        height, width = image.shape[-2:]
        pixels = image[None].float()
        total = torch.zeros(1, self.num_classes, height, width, device=image.device)
        for ratio in ratios:
            h, w = keep_ratio_size(height, width, self.scale[0] * ratio, self.scale[1] * ratio)
            x = normalize(F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False), self.mean, self.std)
            for flipped in (False, True)[: 1 + flip]:
                xi = x.flip(-1) if flipped else x
                xi = F.pad(xi, (0, -w % PAD_TO, 0, -h % PAD_TO))  # zeros = the mean colour after normalising
                with torch.autocast(image.device.type, enabled=image.device.type == "cuda"):
                    logits = model(xi)[..., :h, :w].float()
                logits = logits.flip(-1) if flipped else logits
                total += F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False).softmax(1)
        return total[0]

    @torch.no_grad()
    def evaluate_shard(self, model: nn.Module, device: torch.device, rank: int = 0, world: int = 1) -> dict[str, tuple]:
        """This rank's torchmetrics meters (on the CPU), per mode ("" and, with multiscale_eval, "_ms")."""
        # here, not at module level: ablate.config imports this module for its schema (1.5 s of torchmetrics)
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        model.eval()
        modes = {"": (1.0,), "_ms": MS_RATIOS} if self.multiscale_eval else {"": (1.0,)}
        # sync_on_compute=False: the shards are merged by merge_metrics, not by torchmetrics' own all-gather
        meters = {
            mode: (
                MulticlassJaccardIndex(self.num_classes, average="macro", ignore_index=IGNORE,
                                       sync_on_compute=False).to(device),
                MulticlassAccuracy(self.num_classes, average="micro", ignore_index=IGNORE,
                                   sync_on_compute=False).to(device),
            )
            for mode in modes
        }
        for image, labels in DataLoader(self.val_shard(rank, world), batch_size=None, num_workers=self.eval_workers):
            image, labels = image.to(device), labels.to(device)
            for mode, ratios in modes.items():
                prediction = self.predict(model, image, ratios, flip=mode == "_ms").argmax(0)
                for meter in meters[mode]:
                    meter.update(prediction[None], labels[None])
        model.train()
        return {mode: tuple(meter.cpu() for meter in pair) for mode, pair in meters.items()}

    def merge_metrics(self, shards: Sequence[dict[str, tuple]]) -> dict[str, float]:
        # mIoU: mean over classes present in labels or predictions (mmsegmentation's nanmean).
        metrics = {}
        for mode, (jaccard, accuracy) in shards[0].items():
            for other in shards[1:]:
                jaccard.merge_state(other[mode][0])
                accuracy.merge_state(other[mode][1])
            metrics[f"mIoU{mode}"] = 100.0 * float(jaccard.compute())
            metrics[f"aAcc{mode}"] = 100.0 * float(accuracy.compute())
        return metrics

    def cost(self, model: nn.Module) -> dict[str, Any]:
        """Backbone at `image_size` (params, macs, macs_ssm) plus the whole segmenter at `cost_size`
        (params include the auxiliary head; MACs are inference's, without it)."""
        cost = count_cost(model.features, input_size=self.image_size).as_dict()
        segmenter = count_cost(model, input_size=self.cost_size)
        cost.update(
            segmenter_params=segmenter.params, segmenter_macs=segmenter.macs, segmenter_macs_ssm=segmenter.macs_ssm,
            segmenter_input_size=list(self.cost_size),
        )
        return cost


class EmbeddedADE20K(GeneratedScenesMixin, ADE20KSegmentation):
    """`ade20k-toy` (ablate.tasks.toydata.ade20k), generated under `data_root` on first use, then cached;
    its labels are 1..task.num_classes."""

    def prepare(self) -> None:
        from ablate.tasks.toydata.ade20k import generate_ade20k

        self.root = generate_ade20k(self.root, num_classes=self.num_classes, **self.generator_args)
        super().prepare()
