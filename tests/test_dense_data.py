"""Dense-task data: the COCO / ADE20K toy generators, the loaders' layout checks and training items,
and backbone initialisation from classification checkpoints."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2

from ablate.models import build_model
from ablate.tasks.base import DataError
from ablate.tasks.detection import CocoDetection, CocoInstances, coco_split
from ablate.tasks.segmentation import ADE20KScenes, ADE20KSegmentation, ade_pairs
from ablate.tasks.toydata.ade20k import generate_ade20k
from ablate.tasks.toydata.coco import generate_coco

PICO = dict(name="pico", ssm=False, scan="cross", d_state=16, dt_rank=None, drop_path_rate=None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return generate_coco(tmp_path_factory.mktemp("coco"), image_size=(64, 96), train_size=6, val_size=3, seed=1)


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return generate_ade20k(tmp_path_factory.mktemp("ade"), image_size=(48, 64), train_size=4, val_size=2, seed=1)


def coco_task(root, **kwargs):
    return CocoDetection(name="coco", data_root=str(root), image_size=[64, 96], num_classes=3, **kwargs)


def ade_task(root, **kwargs):
    return ADE20KSegmentation(name="ade20k", data_root=str(root), image_size=[32, 64], num_classes=8, **kwargs)


def folder_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def copy_of(root, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target


# -- generators ----------------------------------------------------------------------------------
def test_coco_toy_is_a_deterministic_coco_dataset(coco_root, tmp_path):
    again = generate_coco(tmp_path, image_size=(64, 96), train_size=6, val_size=3, seed=1)
    assert again != coco_root and folder_digest(again) == folder_digest(coco_root)
    other = generate_coco(tmp_path, image_size=(64, 96), train_size=6, val_size=3, seed=2)
    assert folder_digest(other) != folder_digest(coco_root)

    coco = COCO(str(coco_root / "annotations" / "instances_train2017.json"))
    assert sorted(coco.cats) == [1, 3, 7] and len(coco.imgs) == 6
    kinds = {type(a["segmentation"]).__name__ for a in coco.anns.values()}
    assert kinds == {"list", "dict"}  # polygons and RLE, the two COCO encodings
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        assert mask.sum() == ann["area"] > 0
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        image = coco.imgs[ann["image_id"]]
        assert Image.open(coco_root / "train2017" / image["file_name"]).size == (image["width"], image["height"])


def test_ade20k_toy_is_a_deterministic_ade20k_dataset(ade_root, tmp_path):
    again = generate_ade20k(tmp_path, image_size=(48, 64), train_size=4, val_size=2, seed=1)
    assert folder_digest(again) == folder_digest(ade_root)
    labels = sorted((ade_root / "annotations" / "training").glob("*.png"))
    assert [p.stem for p in labels] == [f"ADE_train_{i:08d}" for i in range(1, 5)]
    for path in labels:
        label = Image.open(path)
        image = Image.open(ade_root / "images" / "training" / f"{path.stem}.jpg")
        values = np.unique(np.asarray(label))
        assert label.mode == "L" and label.size == image.size == (64, 48)
        assert values[0] == 0 and values[-1] <= 8 and len(values) >= 3  # unlabelled rims + >= 2 classes


# -- COCO loader ---------------------------------------------------------------------------------
def _drop_val_images(root):
    shutil.rmtree(root / "val2017")


def _drop_annotation_file(root):
    (root / "annotations" / "instances_val2017.json").unlink()


def _corrupt_json(root):
    (root / "annotations" / "instances_train2017.json").write_text("{not json")


def _strip_key(root):
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))


def _edit_first_annotation(change):
    def breakage(root):
        path = root / "annotations" / "instances_train2017.json"
        data = json.loads(path.read_text())
        change(data["annotations"][0])
        path.write_text(json.dumps(data))
    return breakage


def _delete_one_image(root):
    (root / "val2017" / "000000000002.jpg").unlink()


@pytest.mark.parametrize("breakage, expected", [
    (_drop_val_images, "val2017 is missing"),
    (_drop_annotation_file, "instances_val2017.json is missing"),
    (_corrupt_json, "is not readable JSON"),
    (_strip_key, "expected a COCO instances file"),
    (_delete_one_image, "1 images listed in annotations/instances_val2017.json are absent (e.g. 000000000002.jpg)"),
    (_edit_first_annotation(lambda a: a.pop("bbox")), "instances_train2017.json: annotation id=1 (#0) lacks key 'bbox'"),
    (_edit_first_annotation(lambda a: a.update(bbox=[1, 2, 3])),
     "instances_train2017.json: annotation id=1 (#0) has bbox=[1, 2, 3]; expected [x, y, width, height]"),
    (_edit_first_annotation(lambda a: a.update(category_id=999)),
     "instances_train2017.json: annotation id=1 (#0) has category_id=999, which is not among the file's categories"),
])
def test_broken_coco_layouts_fail_with_one_clear_line(coco_root, tmp_path, breakage, expected):
    root = copy_of(coco_root, tmp_path)
    breakage(root)
    with pytest.raises(DataError) as info:
        coco_task(root).prepare()
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_coco_root_and_class_count_are_checked(coco_root, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        coco_task(tmp_path / "nowhere").prepare()
    with pytest.raises(DataError, match="task.num_classes=80 but .* has 3 categories"):
        CocoDetection(name="coco", data_root=str(coco_root), image_size=[64, 96]).prepare()


def test_coco_image_whose_size_disagrees_with_its_annotation_is_refused(coco_root, tmp_path):
    root = copy_of(coco_root, tmp_path)
    Image.new("RGB", (50, 40)).save(root / "train2017" / "000000000001.jpg")
    task = coco_task(root)
    task.prepare()
    with pytest.raises(DataError, match=r"000000000001.jpg is 50x40 \(WxH\) but its annotation says 96x64"):
        next(iter(task.train_batches(batch_size=6, seed=0, epoch=0)))


def test_a_corrupt_coco_image_is_named(coco_root, tmp_path):
    root = copy_of(coco_root, tmp_path)
    (root / "val2017" / "000000000002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    task = coco_task(root)
    task.prepare()
    with pytest.raises(DataError, match=r"val2017/000000000002.jpg is not a decodable image"):
        task._val.read_image(next(i for i, info in task._val.coco.imgs.items() if info["file_name"] == "000000000002.jpg"))


def test_coco_training_items_are_torchvision_targets(coco_root):
    task = coco_task(coco_root)
    task.prepare()
    assert task.categories == [0, 1, 3, 7] and task.num_train_samples() == 6
    for images, targets in task.train_batches(batch_size=3, seed=0, epoch=0):
        for image, target in zip(images, targets):
            assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
            assert target["masks"].shape == (len(target["boxes"]), 64, 96) and len(target["boxes"]) > 0
            for box, mask in zip(target["boxes"], target["masks"]):
                ys, xs = torch.nonzero(mask, as_tuple=True)  # the xyxy box encloses its mask exactly
                assert torch.equal(box, torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
            assert set(target["labels"].tolist()) <= {1, 2, 3}


def test_coco_flips_mirror_image_masks_and_boxes(coco_root):
    image_dir, coco = coco_split(coco_root, "train2017")

    def items(hflip):
        return CocoInstances(coco, image_dir, {1: 1, 3: 2, 7: 3}, train=True, hflip=hflip).for_epoch(0, 0)

    (image, target), (flipped, mirrored) = items(0.0)[0], items(1.0)[0]
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(mirrored["masks"], target["masks"].flip(-1))
    x0, y0, x1, y1 = target["boxes"].unbind(1)
    assert torch.equal(mirrored["boxes"], torch.stack([96 - x1, y0, 96 - x0, y1], dim=1))
    half = items(0.5)
    flips = [not torch.equal(half[i][0], items(0.0)[i][0]) for i in range(6)]
    assert 0 < sum(flips) < 6 and flips == [not torch.equal(half[i][0], items(0.0)[i][0]) for i in range(6)]


def test_coco_sizes_follow_image_size():
    task = CocoDetection(name="coco", data_root="unused", image_size=[800, 1280])
    assert (task.min_size, task.max_size) == (800, 1333)
    with pytest.raises(ValueError, match=r"task.image_size=\[800\] is not allowed"):
        CocoDetection(name="coco", data_root="unused", image_size=[800])


# -- ADE20K loader -------------------------------------------------------------------------------
def _drop_annotations(root):
    shutil.rmtree(root / "annotations" / "validation")


def _orphan_image(root):
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()


@pytest.mark.parametrize("breakage, expected", [
    (_drop_annotations, "annotations/validation is missing"),
    (_orphan_image, "1 annotations are absent (e.g. ADE_train_00000002)"),
    (lambda root: (root / "images" / "validation" / "ADE_val_00000001.jpg").unlink(), "1 images are absent"),
])
def test_broken_ade20k_layouts_fail_with_one_clear_line(ade_root, tmp_path, breakage, expected):
    root = copy_of(ade_root, tmp_path)
    breakage(root)
    with pytest.raises(DataError) as info:
        ade_task(root).prepare()
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("label, expected", [
    (np.zeros((40, 64), np.uint8), r"ADE_train_00000001.png is 64x40 but ADE_train_00000001.jpg is 64x48"),
    (np.full((48, 64), 9, np.uint8), r"holds label 9 > task.num_classes=8"),
])
def test_bad_ade20k_annotations_are_refused_when_read(ade_root, tmp_path, label, expected):
    root = copy_of(ade_root, tmp_path)
    Image.fromarray(label).save(root / "annotations" / "training" / "ADE_train_00000001.png")
    task = ade_task(root)
    task.prepare()
    with pytest.raises(DataError, match=expected):
        next(iter(task.train_batches(batch_size=4, seed=0, epoch=0)))


def test_ade20k_training_crops_are_padded_with_ignore(ade_root):
    task = ade_task(ade_root, ratio_range=(0.5, 0.5))  # 48x64 -> 16x21 here: smaller than the 32 crop
    task.prepare()
    images, labels = next(iter(task.train_batches(batch_size=4, seed=0, epoch=0)))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 32, 32) and labels.dtype == torch.int64
    assert (labels[:, 16:, :] == 255).all() and (labels[:, :, 21:] == 255).all()
    assert (labels[:, :16, :21] != 255).any() and set(labels.unique().tolist()) <= set(range(8)) | {255}


def test_ade20k_evaluation_items_keep_the_original_size_and_map_labels(ade_root):
    image, label = ADE20KScenes(ade_pairs(ade_root, "validation"), num_classes=8, train=False)[0]
    raw = np.asarray(Image.open(ade_root / "annotations" / "validation" / "ADE_val_00000001.png"))
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert torch.equal(label, torch.from_numpy(np.where(raw == 0, 255, raw.astype(np.int64) - 1)))


def test_training_order_and_augmentation_are_fixed_by_seed_and_epoch(ade_root):
    task = ade_task(ade_root)
    task.prepare()
    first = [b[1] for b in task.train_batches(batch_size=2, seed=5, epoch=1)]
    again = [b[1] for b in task.train_batches(batch_size=2, seed=5, epoch=1)]
    resumed = [b[1] for b in task.train_batches(batch_size=2, seed=5, epoch=1, start_batch=1)]
    other = [b[1] for b in task.train_batches(batch_size=2, seed=6, epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and torch.equal(resumed[0], first[1])
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# -- backbone initialisation ---------------------------------------------------------------------
def _classifier_checkpoint(path, name="pico", ssm=False):
    classifier = build_model(name, ssm=ssm, num_classes=10)
    torch.save({"model": classifier.state_dict(), "step": 3}, path)
    return classifier


def test_backbone_loads_a_classification_checkpoint_of_the_same_arm(tmp_path):
    classifier = _classifier_checkpoint(tmp_path / "checkpoint.pt", ssm=True)
    model = coco_task("unused", backbone_ckpt=str(tmp_path / "checkpoint.pt")).build_model({**PICO, "ssm": True})
    backbone = model.backbone.features.backbone.state_dict()
    reference = classifier.state_dict()
    assert backbone and all(torch.equal(value, reference[key]) for key, value in backbone.items())
    assert not any(key.startswith("head.") for key in backbone)  # the classifier head is dropped

    save_file({k: v.contiguous() for k, v in reference.items()}, str(tmp_path / "weights.safetensors"))
    model = ade_task("unused", backbone_ckpt=str(tmp_path / "weights.safetensors")).build_model({**PICO, "ssm": True})
    assert torch.equal(model.features.backbone.stem.conv1.weight, classifier.stem.conv1.weight)


@pytest.mark.parametrize("checkpoint, expected", [
    (dict(ssm=True), "is a checkpoint of the ssm=true arm but model.ssm=false"),
    (dict(name="nano"), "expected a checkpoint of the same model variant"),
])
def test_mismatched_checkpoints_fail_with_one_clear_line(tmp_path, checkpoint, expected):
    _classifier_checkpoint(tmp_path / "checkpoint.pt", **checkpoint)
    with pytest.raises(ValueError) as info:
        coco_task("unused", backbone_ckpt=str(tmp_path / "checkpoint.pt")).build_model(PICO)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_or_unsafe_checkpoints_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        coco_task("unused", backbone_ckpt=str(tmp_path / "none.pt")).build_model(PICO)
    torch.save({"model": object()}, tmp_path / "pickled.pt")  # not loadable with weights_only=True
    with pytest.raises(DataError, match="is not a loadable weights-only torch file"):
        coco_task("unused", backbone_ckpt=str(tmp_path / "pickled.pt")).build_model(PICO)


def test_ssm_state_matrices_get_no_weight_decay_in_dense_models():
    ssm = {**PICO, "ssm": True}
    for model in (coco_task("unused").build_model(ssm), ade_task("unused").build_model(ssm)):
        optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)  # as the training loop
        decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        by_name = {name: decay[id(p)] for name, p in model.named_parameters()}
        a_logs = [name for name in by_name if name.endswith(".A_log")]
        assert a_logs and all(by_name[name] == 0.0 for name in a_logs)
        assert by_name[next(n for n in by_name if n.endswith("stem.conv1.weight"))] == 0.05
