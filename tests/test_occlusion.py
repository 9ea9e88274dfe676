"""task=occlusion: the generator's labels, the distance-band IoU, the class weights, and one cell end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ablate.tasks.occlusion import BandCounts, OcclusionSegmentation, band_names, median_frequency_weights
from ablate.tasks.toydata.occlusion import BACKGROUND, OCCLUDED, VISIBLE, draw_scene, generate_occlusion
from conftest import load_records, run_cli
from test_analysis_factory import MAMBAOUT_FACTS

SCENE = dict(lines=(3, 6), occluders=(2, 4), occluder_size=(0.15, 0.4), line_width=(2.0, 3.0), curvature=0.5)


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_labels_follow_what_was_drawn_and_what_covers_it(size):
    """Each scene drawn twice from the same seed, once without occluders: the lines are where the
    occluder-free render has line labels; the occluders are where the two renders' pixels differ."""
    occluded_pixels = 0
    for index in range(12):
        image, labels = draw_scene(np.random.default_rng([7, index]), size, **SCENE)
        bare_image, bare_labels = draw_scene(np.random.default_rng([7, index]), size, **{**SCENE, "occluders": (0, 0)})
        drawn = bare_labels != BACKGROUND
        covered = (image != bare_image).any(-1)
        assert set(np.unique(labels)) <= {BACKGROUND, VISIBLE, OCCLUDED}
        assert np.array_equal(labels == OCCLUDED, drawn & covered)  # under an occluder and on a drawn line
        assert np.array_equal(labels == VISIBLE, drawn & ~covered)  # drawn and not covered
        assert np.array_equal(labels == BACKGROUND, ~drawn)
        assert (bare_labels != OCCLUDED).all()
        occluded_pixels += int((labels == OCCLUDED).sum())
    assert occluded_pixels > 0


def test_generated_files_hold_the_drawn_scenes(tmp_path):
    folder = generate_occlusion(tmp_path, image_size=(48, 64), train_size=3, val_size=2, seed=5)
    assert sorted(p.name for p in (folder / "images" / "val").iterdir()) == ["000001.png", "000002.png"]
    image, labels = draw_scene(np.random.default_rng([5, 1, 1]), (48, 64), **SCENE)  # val (split code 1), index 1
    assert np.array_equal(np.asarray(Image.open(folder / "images" / "val" / "000002.png")), image)
    assert np.array_equal(np.asarray(Image.open(folder / "labels" / "val" / "000002.png")), labels)
    assert generate_occlusion(tmp_path, image_size=(48, 64), train_size=3, val_size=2, seed=5) == folder  # cached


def test_a_bad_setting_names_its_key():
    with pytest.raises(ValueError, match=r"task.occluder_size=\[0.5, 0.2\] is not allowed; expected \[min, max\]"):
        generate_occlusion("/nonexistent", occluder_size=[0.5, 0.2])


def test_band_iou_on_a_known_case():
    # One row: a visible line pixel at x=0; occluded pixels at x=4 (distance 4) and x=20 (distance 20).
    labels = np.zeros((1, 40), dtype=np.int64)
    labels[0, 0], labels[0, 4], labels[0, 20] = VISIBLE, OCCLUDED, OCCLUDED
    prediction = np.zeros_like(labels)
    prediction[0, 4] = prediction[0, 10] = OCCLUDED  # a hit at d=4, a false alarm at d=10, a miss at d=20
    counts = BandCounts()
    counts.update(prediction, labels)
    metrics = counts.metrics()
    assert band_names() == ["iou_occluded_d0_8", "iou_occluded_d8_32", "iou_occluded_d32_128", "iou_occluded_d128_inf"]
    # band 0-8: 1 / 1; band 8-32: 0 / 2 (x=10, x=20); bands 32+ hold no occluded pixel of either map: absent
    assert metrics == {"iou_occluded_d0_8": 100.0, "iou_occluded_d8_32": 0.0, "occluded_far_minus_near": -100.0}


def test_median_frequency_weights_equal_the_closed_form(tmp_path):
    paths = []
    for i, counts in enumerate([(6, 3, 1), (10, 1, 3)]):  # pixels of classes 0, 1, 2
        row = np.repeat(np.arange(3, dtype=np.uint8), counts)[None]
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(row).save(paths[-1])
    weights = median_frequency_weights(paths, 3)
    frequency = np.array([16, 4, 4]) / 24
    assert weights.tolist() == pytest.approx((np.median(frequency) / frequency).tolist())
    assert weights.tolist() == pytest.approx([0.25, 1.0, 1.0])


class _Background(nn.Module):
    """Predicts background everywhere: the task's chance model."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, BACKGROUND] = 1.0
        return logits


def test_evaluate_scores_the_background_model_at_chance(tmp_path):
    task = OcclusionSegmentation(name="occlusion", data_root=str(tmp_path), image_size=(64, 64), train_size=4,
                                 val_size=5)
    task.prepare()
    metrics = task.evaluate(_Background(), torch.device("cpu"))
    labels = np.stack([np.asarray(Image.open(p)) for _, p in task._val.pairs])
    assert task.info.chance == 0.0 and task.info.metric == "iou_occluded"
    assert metrics["iou_occluded"] == 0.0 and metrics["iou_visible"] == 0.0
    assert metrics["iou_background"] == pytest.approx(100.0 * (labels == BACKGROUND).mean())
    assert metrics["mIoU"] == pytest.approx(metrics["iou_background"] / 3)
    assert metrics["occluded_far_minus_near"] == 0.0


def test_one_cell_trains_and_records_the_band_metrics(tmp_path):
    run_cli(["model=pico", "task=occlusion", "trainer=cpu", "logger=none", "trainer.max_steps=3", "trainer.batch_size=4",
             "task.train_size=12", "task.val_size=4", "task.image_size=[64,64]", "trainer.warmup_epochs=0",
             "model.ssm=true"], tmp_path)
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == "completed", record["error"]
    assert record["task"]["chance"] == 0.0 and record["task"]["metric"] == "iou_occluded"
    assert {"iou_background", "iou_visible", "iou_occluded", "mIoU", "iou_occluded_d0_8"} <= set(record["metrics"])
    assert all(math.isfinite(v) for v in record["metrics"].values())
    assert record["cost"]["macs_ssm"] > 0 and record["cost"]["segmenter_macs"] > record["cost"]["macs"]
    assert record["family"] == MAMBAOUT_FACTS  # what the report names the arms by, without importing the models


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_split_across_ranks_merges_to_the_whole_splits_metrics(tmp_path, world):
    task = OcclusionSegmentation(name="occlusion", data_root=str(tmp_path), image_size=(64, 64), train_size=4,
                                 val_size=5)
    task.prepare()
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)  # some pixels of every class right, some wrong
    cpu = torch.device("cpu")
    merged = task.merge_metrics([task.evaluate_shard(model, cpu, rank, world) for rank in range(world)])
    whole = task.evaluate(model, cpu)
    assert 0.0 < whole["mIoU"] < 100.0 and merged == pytest.approx(whole, rel=1e-12)
