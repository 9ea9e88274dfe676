"""`ade20k-toy`: a small procedural semantic-segmentation dataset in the exact ADEChallengeData2016 layout.

    <folder>/images/training/ADE_train_00000001.jpg        RGB JPEG
    <folder>/annotations/training/ADE_train_00000001.png   8-bit grey PNG, same size:
    <folder>/images/validation/ADE_val_00000001.jpg         0 = unlabelled ("other", ignored),
    <folder>/annotations/validation/ADE_val_00000001.png    1..num_classes = the classes

Each scene has an upper and a lower region split by a wavy horizon (think wall / floor) and
1..max_objects rectangles or ellipses on top, every region a class with its own colour and pixel
noise. A one-pixel unlabelled (0) rim surrounds every object, like the unlabelled seams of real
ADE20K annotations, so the ignore label is exercised. Every scene is drawn from its own numpy
Generator seeded by (seed, split, index).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ablate.tasks.toydata.imagefolder import (
    SPLIT_CODES,
    cached_dataset,
    check_image_size,
    check_positive,
    check_seed,
)

GENERATOR = "ade20k-toy"
VERSION = 1
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
FILE_PREFIX = {"train": "ADE_train", "val": "ADE_val"}
PALETTE_SEED = 20160  # class colours do not depend on the dataset seed: a class looks the same everywhere
SIZE_RANGE = (0.15, 0.45)  # object extent as a fraction of the image side


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes + 1, 3) RGB base colour per label value (row 0, unlabelled, is unused)."""
    return np.random.default_rng(PALETTE_SEED).uniform(30, 225, size=(num_classes + 1, 3))


def _object_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) bool: one rectangle or ellipse at a random place and size."""
    h, w = (rng.uniform(*SIZE_RANGE, size=2) * (height, width)).clip(3)
    cy, cx = rng.uniform(h / 2, height - h / 2), rng.uniform(w / 2, width - w / 2)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    u, v = (xs - cx) / (w / 2), (ys - cy) / (h / 2)
    if rng.random() < 0.5:
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    return u**2 + v**2 <= 1.0


def _rim(mask: np.ndarray) -> np.ndarray:
    """Pixels just outside `mask` (4-neighbourhood)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown & ~mask


def draw_scene(
    rng: np.random.Generator, image_size: tuple[int, int], num_classes: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: the (H, W, 3) uint8 image and its (H, W) uint8 label map (0 = unlabelled)."""
    height, width = image_size
    labels = np.empty((height, width), dtype=np.uint8)
    upper, lower = rng.choice(np.arange(1, num_classes + 1), size=2, replace=False)
    xs = np.arange(width)
    horizon = height * (rng.uniform(0.35, 0.65) + 0.08 * np.sin(2 * np.pi * xs / width * rng.uniform(0.5, 2.0)))
    labels[:] = np.where(np.arange(height)[:, None] < horizon[None, :], upper, lower)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        mask = _object_mask(rng, height, width)
        labels[_rim(mask)] = 0
        labels[mask] = rng.integers(1, num_classes + 1)
    palette = class_palette(num_classes)
    shade = rng.uniform(0.8, 1.2)  # per-scene lighting
    image = palette[labels] * shade + rng.normal(0, 8.0, size=(height, width, 3))
    image[labels == 0] = 0.5 * palette[lower] * shade  # the seam is a dark line
    return np.clip(image, 0, 255).astype(np.uint8), labels


def generate_ade20k(
    root: str | Path,
    image_size: Sequence[int] = (96, 128),
    train_size: int = 64,
    val_size: int = 16,
    seed: int = 0,
    num_classes: int = 8,
    max_objects: int = 3,
) -> Path:
    """Generate (or find cached) an `ade20k-toy` dataset under `root`; return its folder.

    The folder is an ADEChallengeData2016 root with label values 0..num_classes.
    """
    size = check_image_size(image_size, minimum=16)
    for key, value in (("train_size", train_size), ("val_size", val_size), ("max_objects", max_objects)):
        check_positive(key, value)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 255:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; expected an integer in 2..255 (8-bit labels)")
    check_seed(seed)
    params = {"image_size": list(size), "train_size": train_size, "val_size": val_size, "seed": seed,
              "num_classes": num_classes, "max_objects": max_objects}

    def build(folder: Path) -> dict[str, int]:
        counts = {}
        for split, count in (("train", train_size), ("val", val_size)):
            image_dir = folder / "images" / SPLIT_FOLDERS[split]
            label_dir = folder / "annotations" / SPLIT_FOLDERS[split]
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
                image, labels = draw_scene(rng, size, num_classes, max_objects)
                stem = f"{FILE_PREFIX[split]}_{index + 1:08d}"
                Image.fromarray(image).save(image_dir / f"{stem}.jpg", format="JPEG", quality=95)
                Image.fromarray(labels).save(label_dir / f"{stem}.png", format="PNG")
            counts[split] = count
        return counts

    return cached_dataset(Path(root), GENERATOR, VERSION, params, build)
