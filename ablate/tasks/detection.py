"""COCO object detection and instance segmentation: Mask R-CNN + FPN on the Gated CNN backbone.

Data: the COCO 2017 layout at `data_root` (train2017/, val2017/, annotations/instances_*.json),
read with pycocotools; `EmbeddedCocoDetection` first generates `coco-toy` (ablate.tasks.toydata.coco)
in that same layout. Model: torchvision's MaskRCNN (anchor generator, RPN, RoI heads, mask head,
GeneralizedRCNNTransform) on `BackboneWithFPN`. Evaluation: COCOeval box and mask AP in percent.

Input size, i.e. the sequence-length axis. `image_size` = [H, W] is the nominal input: the size
at which MACs are counted and from which the runner derives seq_len (ceil(H/16) * ceil(W/16); 800x1280 -> 4000
tokens, docs/study.md §2). Images are resized as in the paper's recipe, scaled to H: shorter side H,
longer side at most H*5//3 (800 -> 1333), then padded to a multiple of 32. So sweeping
image_size=[400,640] / [800,1280] / [1024,1600] scales the whole recipe; W only enters the count.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from ablate.models import count_cost
from ablate.rules import at_least, channel_values, size_pair, within
from ablate.tasks.base import DataError, GeneratedScenesMixin, SplitDatasetTask, TaskInfo
from ablate.tasks.heads import BackboneWithFPN, backbone_source, build_backbone, input_size, no_weight_decay

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six COCOeval.stats
IOU_TYPES = {"bbox": "bbox", "segm": "mask"}  # COCOeval iouType -> metric prefix ("bbox_AP", "mask_AP")
COCO_KEYS = ("images", "annotations", "categories")


# -- data ----------------------------------------------------------------------------------------
def read_coco(path: Path) -> COCO:
    """A pycocotools COCO index of an instances file; DataError (one line) if it is not one."""
    hint = "expected a COCO instances file (images, annotations, categories)"
    if not path.is_file():
        raise DataError(f"{path} is missing; {hint}")
    try:
        dataset = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc}); {hint}") from None
    if not isinstance(dataset, dict) or any(not isinstance(dataset.get(k), list) for k in COCO_KEYS):
        found = sorted(dataset) if isinstance(dataset, dict) else type(dataset).__name__
        raise DataError(f"{path} has keys {found}; {hint}")
    _check_annotations(path, dataset)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "segmentation")  # what training and COCOeval read


def _check_annotations(path: Path, dataset: Mapping[str, Any]) -> None:
    """DataError naming the file, the annotation's id and the key, for the first annotation that
    lacks a key, has a box that is not [x, y, w, h], or names an image or category the file lacks."""
    images = {image.get("id") for image in dataset["images"] if isinstance(image, dict)}
    categories = {category.get("id") for category in dataset["categories"] if isinstance(category, dict)}
    for index, ann in enumerate(dataset["annotations"]):
        where = f"{path}: annotation id={ann.get('id') if isinstance(ann, dict) else None} (#{index})"
        if not isinstance(ann, dict):
            raise DataError(f"{where} is a {type(ann).__name__}, not an object")
        missing = [key for key in ANNOTATION_KEYS if key not in ann]
        if missing:
            raise DataError(f"{where} lacks key {missing[0]!r}; an annotation has {', '.join(ANNOTATION_KEYS)}")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataError(f"{where} has bbox={box!r}; expected [x, y, width, height], four numbers")
        if ann["category_id"] not in categories:
            raise DataError(f"{where} has category_id={ann['category_id']!r}, which is not among the file's "
                            f"categories ({', '.join(map(str, sorted(categories, key=str)))})")
        if ann["image_id"] not in images:
            raise DataError(f"{where} has image_id={ann['image_id']!r}, which is not among the file's images")


def coco_split(root: Path, split: str) -> tuple[Path, COCO]:
    """(image folder, annotations) of split `split` (e.g. "train2017"), checked against each other."""
    hint = "point task.data_root at a COCO 2017 root holding train2017/, val2017/ and annotations/"
    if not root.is_dir():
        raise DataError(f"task.data_root={root} does not exist; {hint}")
    image_dir = root / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir} is missing: expected the {split} images there; {hint}")
    coco = read_coco(root / "annotations" / f"instances_{split}.json")
    present = set(os.listdir(image_dir))
    absent = [img["file_name"] for img in coco.dataset["images"] if img["file_name"] not in present]
    if absent:
        raise DataError(
            f"{image_dir}: {len(absent)} images listed in annotations/instances_{split}.json are absent "
            f"(e.g. {absent[0]})"
        )
    return image_dir, coco


def collate_lists(batch: Sequence[tuple[Any, Any]]) -> tuple[list, list]:
    """Detection batches stay lists: images differ in size until the model's transform pads them."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class CocoInstances(Dataset):
    """COCO images as uint8 (3, H, W) tensors with torchvision-style targets.

    Training items: target = {boxes (N, 4) xyxy float, labels (N,) in 1..K, masks (N, H, W) uint8}
    from the non-crowd annotations with area > 0 and w, h >= 1 (images without any are skipped, as mmdetection
    does), horizontally flipped with probability `hflip` by a draw fixed by (seed, epoch, index).
    Evaluation items: target = {"image_id": int}, every image listed.
    """

    def __init__(self, coco: COCO, image_dir: Path, labels: Mapping[int, int], train: bool, hflip: float = 0.0):
        self.coco, self.image_dir, self.labels = coco, image_dir, dict(labels)
        self.train, self.hflip = train, hflip
        self.seed = self.epoch = 0
        ids = sorted(coco.imgs)
        self.ids = [i for i in ids if self.annotations(i)] if train else ids

    def for_epoch(self, seed: int, epoch: int) -> "CocoInstances":
        """A view whose random flips are those of (seed, epoch)."""
        view = copy.copy(self)
        view.seed, view.epoch = seed, epoch
        return view

    def annotations(self, image_id: int) -> list[dict]:
        anns = self.coco.imgToAnns.get(image_id, [])
        return [a for a in anns if not a.get("iscrowd", 0) and a["area"] > 0 and min(a["bbox"][2:]) >= 1]

    def __len__(self) -> int:
        return len(self.ids)

    def read_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W) uint8
        except RuntimeError as exc:  # torchvision's message does not say which file
            raise DataError(f"{path} is not a decodable image ({' '.join(str(exc).split())[:160]})") from None
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise DataError(
                f"{path} is {image.shape[2]}x{image.shape[1]} (WxH) but its annotation says "
                f"{info['width']}x{info['height']}; image and annotation file disagree"
            )
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        image = self.read_image(image_id)
        if not self.train:
            return image, {"image_id": image_id}
        anns = self.annotations(image_id)
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        labels = torch.tensor([self.labels[a["category_id"]] for a in anns], dtype=torch.int64)
        masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
        if np.random.default_rng([self.seed, self.epoch, index]).random() < self.hflip:
            width = image.shape[-1]
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels, "masks": masks}


# -- evaluation ----------------------------------------------------------------------------------
def coco_results(image_id: int, output: Mapping[str, torch.Tensor], categories: Sequence[int]) -> dict[str, list]:
    """One image's MaskRCNN output (original image coordinates) as COCO result entries per iouType.

    `categories[label]` is the COCO category id of contiguous label `label` (index 0 unused).
    Masks are binarised at 0.5, as torchvision's and mmdetection's evaluations do.
    """
    boxes = output["boxes"].float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].float().cpu().tolist()
    cats = [categories[int(label)] for label in output["labels"].cpu()]
    results: dict[str, list] = {"bbox": [], "segm": []}
    for box, score, cat in zip(xywh, scores, cats):
        results["bbox"].append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
    if "masks" in output and len(cats):
        binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)  # (N, H, W)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for rle, score, cat in zip(rles, scores, cats):
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results["segm"].append(
                {"image_id": image_id, "category_id": cat, "segmentation": segmentation, "score": score}
            )
    return results


def coco_metrics(coco_gt: COCO, results: list[dict], iou_type: str) -> dict[str, float]:
    """COCOeval's AP, AP50, AP75, APs, APm, APl (percent) of `results` against `coco_gt`.

    Keys are prefixed "bbox_" or "mask_". A size range without ground truth has no AP (COCOeval
    reports -1) and is left out. No detections at all gives AP 0 wherever there is ground truth.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes rejects an empty list; an empty result set is still a valid answer
            coco_dt = COCO()
            coco_dt.dataset = {key: coco_gt.dataset[key] for key in ("images", "categories")} | {"annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    prefix = IOU_TYPES[iou_type]
    return {f"{prefix}_{name}": 100.0 * float(v) for name, v in zip(AP_NAMES, evaluator.stats[:6]) if v >= 0}


class GatedMaskRCNN(MaskRCNN):
    """torchvision's MaskRCNN, plus the `no_weight_decay()` hook timm's optimizer factory reads."""

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)


class MaskRCNNCounting(nn.Module):
    """Mask R-CNN's inference compute on one fixed-size, normalised image: the module MACs are counted on.

    MaskRCNN.forward resizes its input and keeps a data-dependent number of proposals and
    detections, so it cannot be counted at a stated size. This view runs the same modules on a
    fixed workload, the convention of mmdetection's get_flops for two-stage detectors: backbone +
    FPN, the RPN head on all five levels, the box head and predictor on `proposals` RoIs and the
    mask head and predictor on the first `mask_rois` of them. Anchor decoding, NMS, RoIAlign and
    mask pasting carry no MACs in fvcore's convention and are not run.
    """

    def __init__(self, detector: MaskRCNN, proposals: int = 1000, mask_rois: int = 100):
        super().__init__()
        self.detector, self.proposals, self.mask_rois = detector, proposals, mask_rois

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = images.shape[-2:]
        features = self.detector.backbone(images)
        objectness, deltas = self.detector.rpn.head(list(features.values()))
        heads = self.detector.roi_heads
        # Nested boxes from 5% to 100% of the image: they spread over all FPN levels.
        scale = torch.linspace(0.05, 1.0, self.proposals, device=images.device)[:, None]
        boxes = torch.cat([torch.zeros_like(scale).expand(-1, 2), scale * images.new_tensor([width, height])], dim=1)
        sizes = [(height, width)]
        class_logits, box_deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [boxes], sizes)))
        mask_features = heads.mask_roi_pool(features, [boxes[: self.mask_rois]], sizes)
        mask_logits = heads.mask_predictor(heads.mask_head(mask_features))
        return (*objectness, *deltas, class_logits, box_deltas, mask_logits)


# -- the task ------------------------------------------------------------------------------------
class CocoDetection(SplitDatasetTask):
    """Mask R-CNN 1x on COCO 2017 (docs/study.md §6); primary metric box AP (percent)."""

    def __init__(
        self,
        name: str,
        data_root: str,
        image_size: Annotated[Sequence[int], size_pair()] = (800, 1280),  # nominal input: MACs and L taken here
        num_classes: Annotated[int, at_least(1)] = 80,
        backbone_ckpt: str | None = None,  # classification checkpoint.pt of the same arm, or safetensors
        backbone_from: str | None = None,  # a classification task: start from its cell of this arm and seed (ablate.chain)
        train_split: str = "train2017",
        val_split: str = "val2017",
        fpn_channels: Annotated[int, at_least(1)] = 256,
        roi_batch_size: Annotated[int, at_least(1)] = 512,
        hflip: Annotated[float, within(0, 1)] = 0.5,
        eval_batch_size: Annotated[int, at_least(1)] = 4,
        eval_workers: Annotated[int, at_least(0)] = 0,
        cost_size: Annotated[Sequence[int], size_pair()] = (800, 1280),  # whole-detector MACs
        cost_proposals: Annotated[int, at_least(1)] = 1000,
        cost_mask_rois: Annotated[int, at_least(1)] = 100,
        mean: Annotated[Sequence[float], channel_values(positive=False)] = IMAGENET_DEFAULT_MEAN,
        std: Annotated[Sequence[float], channel_values(positive=True)] = IMAGENET_DEFAULT_STD,
    ):
        self.info = TaskInfo(name=name, kind="detection", metric="bbox_AP", higher_is_better=True)
        self.root = Path(data_root)
        self.image_size = input_size("image_size", image_size)
        self.min_size, self.max_size = self.image_size[0], self.image_size[0] * 5 // 3  # 800 -> 1333
        self.num_classes = num_classes
        self.backbone_ckpt = backbone_source(backbone_ckpt, backbone_from)
        self.splits = (train_split, val_split)
        self.fpn_channels, self.roi_batch_size = fpn_channels, roi_batch_size
        self.hflip = hflip
        self.eval_batch_size, self.eval_workers = eval_batch_size, eval_workers
        self.cost_size = input_size("cost_size", cost_size)
        self.cost_proposals, self.cost_mask_rois = cost_proposals, cost_mask_rois
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.collate_fn = collate_lists
        self.categories: list[int] = []  # contiguous label -> COCO category id (index 0: background)

    # -- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        train_dir, train_coco = coco_split(self.root, self.splits[0])
        val_dir, val_coco = coco_split(self.root, self.splits[1])
        cat_ids = sorted(train_coco.cats)
        if sorted(val_coco.cats) != cat_ids:
            raise DataError(f"{self.root}/annotations: {self.splits[0]} and {self.splits[1]} list different categories")
        if len(cat_ids) != self.num_classes:
            raise DataError(
                f"task.num_classes={self.num_classes} but {self.root}/annotations/instances_{self.splits[0]}.json "
                f"has {len(cat_ids)} categories; set task.num_classes={len(cat_ids)}"
            )
        labels = {cat: i + 1 for i, cat in enumerate(cat_ids)}  # 0 is torchvision's background
        self.categories = [0, *cat_ids]
        self._train = CocoInstances(train_coco, train_dir, labels, train=True, hflip=self.hflip)
        self._val = CocoInstances(val_coco, val_dir, labels, train=False)
        if len(self._train) == 0:
            raise DataError(f"{train_dir}: no image has a usable (non-crowd, w and h >= 1) annotation")

    def epoch_dataset(self, seed: int, epoch: int) -> CocoInstances:
        return self._require_prepared()[0].for_epoch(seed, epoch)  # flips drawn from (seed, epoch, index)

    # -- model, loss ----------------------------------------------------------------------------
    def build_model(self, model_cfg: Mapping[str, Any]) -> nn.Module:
        width = self.fpn_channels
        body = BackboneWithFPN(build_backbone(model_cfg, self.image_size, self.backbone_ckpt), width)
        # mmdetection's Mask R-CNN anchors: one size per level (8 x stride 4..64), three aspect ratios.
        anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
        # torchvision's default heads, except that the mask head follows the FPN width (256 = default).
        return GatedMaskRCNN(
            body, num_classes=None, min_size=self.min_size, max_size=self.max_size,
            image_mean=self.mean, image_std=self.std, rpn_anchor_generator=anchors,
            box_predictor=FastRCNNPredictor(1024, self.num_classes + 1), box_batch_size_per_image=self.roi_batch_size,
            mask_head=MaskRCNNHeads(width, (width,) * 4, 1),
            mask_predictor=MaskRCNNPredictor(width, width, self.num_classes + 1),
        )

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, targets = batch
        images = [image.to(device, non_blocking=True).float().div_(255) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = model(images, targets)  # RPN objectness + box, RoI classifier + box, mask
        return sum(losses.values())

    # -- evaluation, cost -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_shard(self, model: nn.Module, device: torch.device, rank: int = 0, world: int = 1) -> dict[str, list]:
        """This rank's detections in COCO's result format: {"bbox": [...], "segm": [...]}."""
        model.eval()
        results: dict[str, list] = {"bbox": [], "segm": []}
        loader = DataLoader(
            self.val_shard(rank, world), batch_size=self.eval_batch_size, num_workers=self.eval_workers,
            collate_fn=collate_lists,
        )
        for images, targets in loader:
            images = [image.to(device, non_blocking=True).float().div_(255) for image in images]
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                outputs = model(images)
            for target, output in zip(targets, outputs):
                for iou_type, entries in coco_results(target["image_id"], output, self.categories).items():
                    results[iou_type].extend(entries)
        model.train()
        return results

    def merge_metrics(self, shards: Sequence[dict[str, list]]) -> dict[str, float]:
        """COCO's own evaluation of every rank's detections together (each image is in one shard)."""
        _, val = self._require_prepared()
        metrics = {}
        for iou_type in IOU_TYPES:
            metrics.update(coco_metrics(val.coco, [entry for shard in shards for entry in shard[iou_type]], iou_type))
        return metrics

    def cost(self, model: nn.Module) -> dict[str, Any]:
        """Backbone at `image_size` (params, macs, macs_ssm) plus the whole detector at `cost_size`."""
        cost = count_cost(model.backbone.features, input_size=self.image_size).as_dict()
        device = next(model.parameters()).device
        counting = MaskRCNNCounting(model, self.cost_proposals, self.cost_mask_rois)
        detector = count_cost(counting, inputs=(torch.zeros(1, 3, *self.cost_size, device=device),))
        cost.update(
            detector_params=detector.params, detector_macs=detector.macs, detector_macs_ssm=detector.macs_ssm,
            detector_input_size=list(self.cost_size), detector_proposals=self.cost_proposals,
            detector_mask_rois=self.cost_mask_rois,
        )
        return cost


class EmbeddedCocoDetection(GeneratedScenesMixin, CocoDetection):
    """`coco-toy` (ablate.tasks.toydata.coco), generated under `data_root` on first use, then cached."""

    def prepare(self) -> None:
        from ablate.tasks.toydata.coco import generate_coco

        self.root = generate_coco(self.root, **self.generator_args)
        super().prepare()
