"""Classification task: the ImageFolder layout check, and the paired data order across arms."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ablate.config import compose
from ablate.tasks.base import DataError, EpochSampler
from ablate.tasks.classification import ImageFolderClassification
from ablate.train import fit


def write_imagefolder(root, classes=("a", "b"), per_class=2, splits=("train", "val")):
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.JPEG")
    return root


def imagenet_task(root, num_classes=2):
    return ImageFolderClassification(name="imagenet", data_root=str(root), image_size=[8, 8], num_classes=num_classes)


def test_valid_layout_loads_through_timm(tmp_path):
    task = imagenet_task(write_imagefolder(tmp_path / "inet"))
    task.prepare()
    assert task.num_train_samples() == 4 and task.num_eval_samples() == 4
    images, targets, replaced = next(iter(task.train_batches(batch_size=2, seed=0, epoch=0)))
    assert images.shape == (2, 3, 8, 8) and targets.dtype == torch.int64 and replaced.tolist() == [-1, -1]


def _corrupt(path, how):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not an image" * 20}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_corrupt_training_images_are_replaced_and_counted(tmp_path, how):
    root = write_imagefolder(tmp_path / "inet", per_class=3)
    _corrupt(root / "train" / "a" / "1.JPEG", how)
    _corrupt(root / "train" / "b" / "0.JPEG", how)
    task = imagenet_task(root)
    task.prepare()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    for batch in task.train_batches(batch_size=2, seed=0, epoch=0):
        task.training_step(model, batch, torch.device("cpu"))
    assert task.data_summary() == {"train_images": 6, "val_images": 6, "corrupt_train_images": 2}


def test_a_corrupt_validation_image_fails_with_its_path(tmp_path):
    root = write_imagefolder(tmp_path / "inet")
    bad = root / "val" / "b" / "1.JPEG"
    _corrupt(bad, "truncated")
    task = imagenet_task(root)
    task.prepare()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(DataError, match="corrupt validation image") as info:
        task.evaluate(model, torch.device("cpu"))
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("breakage, expected", [
    (lambda r: None, "does not exist"),
    (lambda r: write_imagefolder(r, splits=("train",)), "val is missing"),
    (lambda r: (write_imagefolder(r), (r / "val" / "c").mkdir()), "holds no images"),
    (lambda r: write_imagefolder(r, classes=("a", "b", "c")), "task.num_classes=2 but"),
    (lambda r: (write_imagefolder(r), write_imagefolder(r, classes=("z",), splits=("val",))), "class folders differ"),
])
def test_broken_layouts_fail_with_one_clear_line(tmp_path, breakage, expected):
    root = tmp_path / "inet"
    breakage(root)
    with pytest.raises(DataError) as info:
        imagenet_task(root).prepare()
    message = str(info.value)
    assert expected in message and "\n" not in message and str(root) in message


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a = EpochSampler(50, 8, seed=3, epoch=1).indices
    assert a == EpochSampler(50, 8, seed=3, epoch=1).indices and len(a) == 48
    assert a != EpochSampler(50, 8, seed=4, epoch=1).indices
    assert a != EpochSampler(50, 8, seed=3, epoch=2).indices
    assert EpochSampler(50, 8, seed=3, epoch=1, start_batch=2).indices == a[16:]


def test_both_arms_see_the_same_batches(tmp_path):
    """The comparison is paired: same seed -> same images (augmentation included) in the same order."""
    cfg = compose(["task=shapes", "model=pico", "trainer=cpu", "logger=none", f"paths.data={tmp_path}",
                   "task.train_size=60", "task.val_size=20", "trainer.batch_size=8", "trainer.max_steps=4",
                   "task.auto_augment=rand-m9-mstd0.5-inc1", "task.mixup=0.8", "task.reprob=0.25"])
    seen = {}
    for ssm in (False, True):
        task = instantiate(cfg.task)
        task.prepare()
        digests = []
        original = task.training_step

        def recording_step(model, batch, device, original=original, digests=digests):
            images, targets, _ = batch
            digests.append(hashlib.sha256(images.numpy().tobytes() + targets.numpy().tobytes()).hexdigest())
            return original(model, batch, device)

        task.training_step = recording_step
        torch.manual_seed(0)
        model = task.build_model({**cfg.model, "ssm": ssm})
        fit(model, task, cfg.trainer, tmp_path / f"run-{ssm}", seed=0)
        seen[ssm] = digests
    assert len(seen[False]) == 4 and seen[False] == seen[True]


def test_evaluation_with_loader_workers_gives_the_same_metrics(tmp_path):
    root = write_imagefolder(tmp_path / "inet", classes=("a", "b", "c"), per_class=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    metrics = {}
    for workers in (0, 2):
        task = ImageFolderClassification(name="imagenet", data_root=str(root), image_size=[8, 8], num_classes=3,
                                         eval_batch_size=2, eval_workers=workers)
        task.prepare()
        metrics[workers] = task.evaluate(model, torch.device("cpu"))
    assert metrics[2] == metrics[0] and set(metrics[0]) == {"top1", "loss"}
    assert compose(["task=imagenet"]).task.eval_workers == 8  # ImageNet decodes its validation JPEGs in parallel


@pytest.mark.parametrize("world", [2, 3, 7])
def test_evaluation_split_across_ranks_merges_to_the_whole_splits_metrics(tmp_path, world):
    task = instantiate(compose(["task=shapes", "task.train_size=20", "task.val_size=20",
                                f"task.data_root={tmp_path}"]).task)
    task.prepare()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    cpu = torch.device("cpu")
    shards = [task.evaluate_shard(model, cpu, rank, world) for rank in range(world)]
    assert sum(shard["total"] for shard in shards) == 20  # 7 ranks: shares of 3, 3, 3, 3, 3, 3 and 2
    whole = task.evaluate(model, cpu)
    assert 0 < whole["top1"] < 100  # a model that gets some right and some wrong
    # counts exactly; the loss up to float32 sums taken over other batches
    assert task.merge_metrics(shards) == pytest.approx(whole, rel=1e-6)
    assert {k: v for k, v in task.merge_metrics(shards).items() if k != "loss"} == {
        k: v for k, v in whole.items() if k != "loss"}


def test_the_ranks_shares_of_the_validation_split_take_every_sample_once(tmp_path):
    task = imagenet_task(write_imagefolder(tmp_path / "inet", per_class=5))
    task.prepare()
    for world in (1, 2, 3, 4):
        shares = [list(getattr(task.val_shard(rank, world), "indices", range(10))) for rank in range(world)]
        assert sorted(i for share in shares for i in share) == list(range(10))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced
