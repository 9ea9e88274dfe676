"""COCO detection task: Mask R-CNN training and evaluation on coco-toy, COCOeval on known answers, cost."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from ablate.models import count_cost
from ablate.tasks.detection import EmbeddedCocoDetection, MaskRCNNCounting

CPU = torch.device("cpu")
# coco-toy at its native 96x128, the Mask R-CNN heads narrowed (FPN 32 wide, 64 sampled RoIs) for a CPU.
TOY = dict(
    name="coco_toy", image_size=[96, 128], num_classes=3, train_size=4, val_size=3, source_size=[96, 128],
    fpn_channels=32, roi_batch_size=64, eval_batch_size=2, cost_size=[128, 128],
)


def model_cfg(ssm: bool) -> dict:
    return dict(name="pico", ssm=ssm, scan="cross", d_state=16, dt_rank=None, drop_path_rate=None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    task = EmbeddedCocoDetection(data_root=str(tmp_path_factory.mktemp("data")), **TOY)
    task.prepare()
    return task


@pytest.fixture(scope="module")
def ground_truth(task):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(task.root / "annotations" / "instances_val2017.json"))


def quiet_coco_eval(gt: COCO, results: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


class Oracle(nn.Module):
    """Answers each evaluation image, in order of image id, with its ground truth (boxes shifted by `dx`)."""

    def __init__(self, gt: COCO, dx: float = 0.0):
        super().__init__()
        self.answers, self.dx = [], dx
        label_of = {cat: i + 1 for i, cat in enumerate(sorted(gt.cats))}
        for image_id in sorted(gt.imgs):
            anns = gt.imgToAnns[image_id]
            boxes = torch.tensor([[x + dx, y, x + dx + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
            masks = torch.from_numpy(np.stack([gt.annToMask(a) for a in anns])).float()[:, None]
            labels = torch.tensor([label_of[a["category_id"]] for a in anns])
            self.answers.append({"boxes": boxes, "labels": labels, "scores": torch.ones(len(anns)), "masks": masks})
        self.seen = 0

    def forward(self, images):
        out = self.answers[self.seen : self.seen + len(images)]
        self.seen += len(images)
        return out


@pytest.mark.parametrize("ssm", [False, True], ids=["gated_cnn", "ssm"])
def test_one_training_step_and_one_evaluation_on_cpu(task, ssm):
    torch.manual_seed(0)
    model = task.build_model(model_cfg(ssm))
    assert model.transform.min_size == (96,) and model.transform.max_size == 160
    images, targets = next(iter(task.train_batches(batch_size=2, seed=0, epoch=0)))
    loss = task.training_step(model, (images, targets), CPU)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    backbone_grads = [p.grad for p in model.backbone.features.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in backbone_grads) and any(g.abs().sum() > 0 for g in backbone_grads)
    metrics = task.evaluate(model, CPU)
    assert model.training  # evaluate hands the model back in training mode
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "mask_AP", "mask_AP50", "mask_AP75"):
        assert 0.0 <= metrics[key] <= 100.0


def test_ground_truth_as_predictions_scores_100(task, ground_truth):
    metrics = task.evaluate(Oracle(ground_truth), CPU)
    assert metrics["bbox_AP"] == pytest.approx(100.0) and metrics["mask_AP"] == pytest.approx(100.0)
    assert metrics["bbox_AP50"] == pytest.approx(100.0) and metrics["mask_AP75"] == pytest.approx(100.0)


def test_shifted_boxes_score_what_cocoeval_gives_on_those_boxes(task, ground_truth):
    dx = 3.0
    metrics = task.evaluate(Oracle(ground_truth, dx=dx), CPU)
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
         "bbox": [a["bbox"][0] + dx, *a["bbox"][1:]]}
        for a in ground_truth.anns.values()
    ]
    expected = quiet_coco_eval(ground_truth, results, "bbox")
    assert 0.0 < expected[0] < 1.0  # a shift of 3 px passes some IoU thresholds, not all
    assert metrics["bbox_AP"] == pytest.approx(100.0 * expected[0], abs=1e-9)
    assert metrics["bbox_AP75"] == pytest.approx(100.0 * expected[2], abs=1e-9)
    assert metrics["mask_AP"] == pytest.approx(100.0)  # masks were left in place


def test_no_detections_score_zero(task):
    class Blind(nn.Module):
        def forward(self, images):
            return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
                     "masks": torch.zeros(0, 1, 96, 128)} for _ in images]

    metrics = task.evaluate(Blind(), CPU)
    assert metrics["bbox_AP"] == 0.0 and metrics["mask_AP"] == 0.0


@pytest.mark.parametrize("ssm", [False, True], ids=["gated_cnn", "ssm"])
def test_cost_counts_the_backbone_at_image_size_and_the_detector_at_cost_size(tmp_path, ssm):
    task = EmbeddedCocoDetection(data_root=str(tmp_path), **{**TOY, "image_size": [32, 64], "cost_size": [64, 64]})
    model = task.build_model(model_cfg(ssm))
    cost = task.cost(model)  # needs no data
    assert cost["params"] == sum(p.numel() for p in model.backbone.features.parameters())
    assert cost["detector_params"] == sum(p.numel() for p in model.parameters())
    assert cost["detector_input_size"] == [64, 64] and cost["detector_macs"] > 2 * cost["macs"]
    assert (cost["macs_ssm"] > 0) == ssm and cost["detector_macs_ssm"] == 2 * cost["macs_ssm"]  # 2x the pixels
    assert (cost["detector_proposals"], cost["detector_mask_rois"]) == (1000, 100)
    if not ssm:  # (counting the SSM arm is slow on a CPU: once is enough)
        backbone = count_cost(model.backbone.features, input_size=(32, 64))
        assert (cost["macs"], cost["macs_ssm"]) == (backbone.macs, 0)


def test_detector_macs_grow_by_the_box_head_per_proposal(task):
    """Known answer: each extra proposal costs the box head's two FCs and the predictor's two FCs."""
    model = task.build_model(model_cfg(False))
    image = (torch.zeros(1, 3, 64, 64),)
    more = count_cost(MaskRCNNCounting(model, proposals=200, mask_rois=10), inputs=image).macs
    fewer = count_cost(MaskRCNNCounting(model, proposals=100, mask_rois=10), inputs=image).macs
    classes = 3 + 1
    per_roi = 32 * 7 * 7 * 1024 + 1024 * 1024 + 1024 * classes + 1024 * 4 * classes
    assert more - fewer == 100 * per_roi


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_split_across_ranks_merges_to_what_coco_gives_on_the_whole_split(task, ground_truth, world):
    dx = 3.0  # shifted boxes: an AP strictly between 0 and 100
    shards = []
    for rank in range(world):
        oracle = Oracle(ground_truth, dx=dx)
        oracle.answers = oracle.answers[rank::world]  # this rank's images: rank, rank + world, ...
        shards.append(task.evaluate_shard(oracle, CPU, rank, world))
    merged = task.merge_metrics(shards)
    whole = task.evaluate(Oracle(ground_truth, dx=dx), CPU)
    assert 0.0 < whole["bbox_AP"] < 100.0 and merged == pytest.approx(whole, abs=1e-12)
