"""`imagenet_toy`: an embedded stand-in for ImageNet, so the pretrain-then-fine-tune chain runs offline.

It is written in ImageNet-1k's own on-disk layout, the one `task=imagenet` reads:

    <folder>/train/<wnid>/<wnid>_<n>.JPEG           (n from 1 within the class)
    <folder>/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG

with real synset ids as class folders and RGB JPEG files, so it goes through exactly the loading,
augmentation and evaluation code of the real dataset. The images are the `shapes` generator's
(one procedural shape per image, the class its geometry), at the task's input size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ablate.tasks.toydata.imagefolder import (
    cached_dataset, check_image_size, check_positive, check_seed, is_int, write_imagefolder,
)
from ablate.tasks.toydata.shapes import SHAPE_CLASSES, draw_shape

GENERATOR = "imagenet_toy"
VERSION = 1
JPEG_QUALITY = 90
# The first twelve synsets of ImageNet-1k in its sorted class order (tench, goldfish, great white shark,
# ...): class folder i holds shape SHAPE_CLASSES[i].
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331",
         "n01498041", "n01514668", "n01514859", "n01518878", "n01530575", "n01531178")


def save_jpeg(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a baseline RGB JPEG, as ImageNet's files are."""
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)


def file_name(split: str, wnid: str, index: int, number: int) -> str:
    """ImageNet's file names: <wnid>_<n>.JPEG in train, ILSVRC2012_val_<number>.JPEG in val."""
    return f"{wnid}_{index + 1}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"


def generate_imagenet_toy(root: Path, image_size: tuple[int, int], train_per_class: int, val_per_class: int,
                          seed: int, num_classes: int = 10) -> Path:
    """Generate (or reuse) the dataset under ROOT/imagenet_toy-<H>x<W>-s<seed>-<digest>/; return its folder."""
    size = check_image_size(image_size, minimum=8)
    check_positive("train_per_class", train_per_class)
    check_positive("val_per_class", val_per_class)
    check_seed(seed)
    if not is_int(num_classes) or not 2 <= num_classes <= len(WNIDS):
        raise ValueError(f"num_classes={num_classes!r} is not allowed; expected an integer in [2, {len(WNIDS)}]")
    wnids, shapes = list(WNIDS[:num_classes]), SHAPE_CLASSES[:num_classes]
    per_class = {"train": int(train_per_class), "val": int(val_per_class)}
    params: dict[str, Any] = {"image_size": list(size), "seed": int(seed), "train_per_class": per_class["train"],
                              "val_per_class": per_class["val"], "classes": dict(zip(wnids, shapes))}

    def build(folder: Path) -> dict[str, dict[str, int]]:
        return write_imagefolder(folder, per_class, wnids, seed, lambda rng, i: draw_shape(rng, size, shapes[i]),
                                 file_name=file_name, save=save_jpeg)

    return cached_dataset(Path(root), GENERATOR, VERSION, params, build)
