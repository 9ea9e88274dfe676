"""ADE20K segmentation task: UperNet training and evaluation on ade20k-toy, mIoU on known answers, cost."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ablate.models import count_cost
from ablate.tasks.segmentation import EmbeddedADE20K, keep_ratio_size

CPU = torch.device("cpu")
CLASSES = 6
# ade20k-toy at 96x128; image_size [96, 128] makes the single-scale test input the image itself.
TOY = dict(
    name="ade20k_toy", image_size=[96, 128], num_classes=CLASSES, train_size=4, val_size=3, source_size=[96, 128],
    channels=32, aux_channels=16, cost_size=[64, 128],
)


def model_cfg(ssm: bool) -> dict:
    return dict(name="pico", ssm=ssm, scan="cross", d_state=16, dt_rank=None, drop_path_rate=None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    task = EmbeddedADE20K(data_root=str(tmp_path_factory.mktemp("data")), multiscale_eval=False, **TOY)
    task.prepare()
    return task


@pytest.fixture(scope="module")
def val_labels(task):
    """The validation label maps, read here with PIL: 0..CLASSES-1, 255 = ignored."""
    paths = sorted((task.root / "annotations" / "validation").glob("*.png"))
    raws = [np.asarray(Image.open(p)).astype(np.int64) for p in paths]
    return [np.where(raw == 0, 255, raw - 1) for raw in raws]


class Oracle(nn.Module):
    """Answers the i-th forward call with one-hot logits of the i-th validation label map."""

    def __init__(self, labels):
        super().__init__()
        self.labels, self.seen = labels, 0

    def forward(self, x):
        label = torch.from_numpy(self.labels[self.seen])
        self.seen += 1
        assert x.shape[-2:] == label.shape  # 96x128 needs neither resizing nor padding
        return 10.0 * nn.functional.one_hot(label.clamp(max=CLASSES - 1), CLASSES).permute(2, 0, 1)[None].float()


class Constant(nn.Module):
    """Predicts class `k` everywhere, at whatever size and flip it is given."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        logits = torch.zeros(x.shape[0], CLASSES, *x.shape[-2:])
        logits[:, self.k] = 1.0
        return logits


@pytest.mark.parametrize("ssm", [False, True], ids=["gated_cnn", "ssm"])
def test_one_training_step_and_one_evaluation_on_cpu(task, ssm):
    torch.manual_seed(0)
    model = task.build_model(model_cfg(ssm))
    images, labels = next(iter(task.train_batches(batch_size=2, seed=0, epoch=0)))
    assert images.shape == (2, 3, 96, 96) and labels.shape == (2, 96, 96)
    loss = task.training_step(model, (images, labels), CPU)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.aux_head.conv[0].weight.grad.abs().sum() > 0  # the auxiliary loss trains its head
    assert all(p.grad is not None for p in model.features.parameters())
    metrics = task.evaluate(model, CPU)
    assert model.training and 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0


def test_ground_truth_as_prediction_scores_100(task, val_labels):
    metrics = task.evaluate(Oracle(val_labels), CPU)
    assert metrics == {"mIoU": pytest.approx(100.0), "aAcc": pytest.approx(100.0)}


def test_constant_prediction_scores_its_iou_single_and_multi_scale(task, val_labels):
    k = int(val_labels[0][val_labels[0] != 255][0])
    # Independent answer: IoU of class k pooled over images; other classes present in the labels
    # have IoU 0; absent classes (union 0) do not count.
    labels = np.concatenate([lab.ravel() for lab in val_labels])
    valid = labels != 255
    intersection, union = np.sum(labels[valid] == k), np.sum(valid)
    present = set(np.unique(labels[valid]).tolist()) | {k}
    expected_miou = 100.0 * intersection / union / len(present)
    expected_acc = 100.0 * intersection / union
    task.multiscale_eval = True
    try:
        metrics = task.evaluate(Constant(k), CPU)
    finally:
        task.multiscale_eval = False
    assert metrics == {
        "mIoU": pytest.approx(expected_miou), "aAcc": pytest.approx(expected_acc),
        "mIoU_ms": pytest.approx(expected_miou), "aAcc_ms": pytest.approx(expected_acc),
    }


def test_test_scale_keeps_the_aspect_ratio_within_image_size():
    assert keep_ratio_size(512, 683, 512, 2048) == (512, 683)  # a typical ADE20K image at the paper's scale
    assert keep_ratio_size(300, 2000, 512, 2048) == (307, 2048)  # the longer side limits
    assert keep_ratio_size(480, 640, 256, 1024) == (256, 341)


@pytest.mark.parametrize("ssm", [False, True], ids=["gated_cnn", "ssm"])
def test_cost_counts_the_backbone_at_image_size_and_the_segmenter_at_cost_size(tmp_path, ssm):
    task = EmbeddedADE20K(data_root=str(tmp_path), **{**TOY, "image_size": [32, 64], "cost_size": [64, 64]})
    model = task.build_model(model_cfg(ssm))
    cost = task.cost(model)  # needs no data
    assert cost["params"] == sum(p.numel() for p in model.features.parameters())
    assert cost["segmenter_params"] == sum(p.numel() for p in model.parameters())  # auxiliary head included
    assert cost["segmenter_input_size"] == [64, 64] and cost["segmenter_macs"] > 2 * cost["macs"]
    assert (cost["macs_ssm"] > 0) == ssm and cost["segmenter_macs_ssm"] == 2 * cost["macs_ssm"]  # 2x the pixels
    if not ssm:  # (counting the SSM arm is slow on a CPU: once is enough)
        backbone = count_cost(model.features, input_size=(32, 64))
        assert (cost["macs"], cost["macs_ssm"]) == (backbone.macs, 0)


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_split_across_ranks_merges_to_the_whole_splits_metrics(task, world):
    torch.manual_seed(0)
    model = task.build_model(model_cfg(ssm=False))
    task.multiscale_eval = True
    try:
        merged = task.merge_metrics([task.evaluate_shard(model, CPU, rank, world) for rank in range(world)])
        whole = task.evaluate(model, CPU)
    finally:
        task.multiscale_eval = False
    assert set(whole) == {"mIoU", "aAcc", "mIoU_ms", "aAcc_ms"} and 0.0 < whole["aAcc"] < 100.0
    assert merged == pytest.approx(whole, rel=1e-6)
