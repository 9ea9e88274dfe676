"""`coco-toy`: a small procedural instance-segmentation dataset in the exact COCO 2017 layout.

    <folder>/train2017/000000000001.jpg ...      JPEG images
    <folder>/val2017/000000000001.jpg ...
    <folder>/annotations/instances_train2017.json   COCO "instances" files (pycocotools reads them)
    <folder>/annotations/instances_val2017.json

Each image holds 1..max_objects non-overlapping shapes (rectangles, triangles, ellipses) over a
smooth noisy background. Category ids are sparse (1, 3, 7) like COCO's 1..90, so the loaders' id
mapping is exercised. Rectangles and triangles are stored as polygons, ellipses as compressed RLE,
the two encodings real COCO uses. The pixels of an object are painted through exactly the mask
pycocotools decodes from its annotation, so annotations and images agree to the pixel (up to JPEG).
Every image is drawn from its own numpy Generator seeded by (seed, split, index).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ablate.tasks.toydata.imagefolder import (
    SPLIT_CODES,
    cached_dataset,
    check_image_size,
    check_positive,
    check_seed,
)

GENERATOR = "coco-toy"
VERSION = 1
CATEGORIES = (
    {"id": 1, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "ellipse", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
)
# A base colour per category (RGB), jittered per object: colour is a cue, so a demo learns fast.
CATEGORY_COLOURS = {1: (200, 60, 50), 3: (60, 180, 70), 7: (50, 80, 210)}
SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}
SIZE_RANGE = (0.2, 0.45)  # object extent as a fraction of min(H, W)
MIN_SIDE = 6  # pixels: the smallest object side, so every box is well above COCO's w, h >= 1
PLACEMENT_TRIES = 30


def _box_free(box: tuple[float, float, float, float], taken: list[tuple[float, float, float, float]]) -> bool:
    """True if the xyxy box keeps a 2-pixel gap to every box already placed."""
    x0, y0, x1, y1 = box
    return all(x1 + 2 <= a0 or a1 + 2 <= x0 or y1 + 2 <= b0 or b1 + 2 <= y0 for a0, b0, a1, b1 in taken)


def _segmentation(category: int, box: tuple[float, float, float, float], height: int, width: int, rng) -> Any:
    """COCO `segmentation` of one object inside the xyxy box: polygon list or compressed RLE."""
    x0, y0, x1, y1 = box
    if category == 1:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]
    if category == 7:
        apex = round(x0 + rng.uniform(0.2, 0.8) * (x1 - x0), 1)
        return [[apex, y0, x1, y1, x0, y1]] if rng.random() < 0.5 else [[x0, y0, x1, y0, apex, y1]]
    # Ellipse inscribed in the box, rasterised at pixel centres, stored as compressed RLE.
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    rle = mask_utils.encode(np.asfortranarray(inside.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def annotation_rle(segmentation: Any, height: int, width: int) -> dict:
    """The compressed RLE of a COCO segmentation (polygon list or RLE), as pycocotools reads it."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float: a linear gradient between two random colours plus pixel noise."""
    start, end = rng.uniform(60, 190, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = (np.cos(angle) * xs / width + np.sin(angle) * ys / height + 1.0) / 2.0
    image = start + (end - start) * t[..., None]
    return image + rng.normal(0, 6.0, size=image.shape)


def draw_image(
    rng: np.random.Generator, image_size: tuple[int, int], max_objects: int
) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) uint8 and its objects as dicts with category_id and segmentation."""
    height, width = image_size
    image = _background(rng, height, width)
    taken: list[tuple[float, float, float, float]] = []
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _ in range(PLACEMENT_TRIES):
            side = min(height, width) * rng.uniform(*SIZE_RANGE, size=2)
            w, h = max(side[0], MIN_SIDE), max(side[1], MIN_SIDE)
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            box = (round(x0, 1), round(y0, 1), round(x0 + w, 1), round(y0 + h, 1))
            if _box_free(box, taken):
                break
        else:
            continue  # no room left for this object
        taken.append(box)
        category = int(rng.choice([c["id"] for c in CATEGORIES]))
        segmentation = _segmentation(category, box, height, width, rng)
        mask = mask_utils.decode(annotation_rle(segmentation, height, width)).astype(bool)
        colour = np.array(CATEGORY_COLOURS[category]) + rng.uniform(-25, 25, size=3)
        image[mask] = colour + rng.normal(0, 6.0, size=(int(mask.sum()), 3))
        objects.append({"category_id": category, "segmentation": segmentation})
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _write_split(folder: Path, split: str, size: int, image_size: tuple[int, int], seed: int, max_objects: int) -> dict:
    """Write the images and annotation file of one split; return its counts."""
    image_dir = folder / SPLIT_FOLDERS[split]
    image_dir.mkdir(parents=True)
    height, width = image_size
    images, annotations = [], []
    for index in range(size):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
        pixels, objects = draw_image(rng, image_size, max_objects)
        image_id = index + 1
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(image_dir / file_name, format="JPEG", quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            rle = annotation_rle(obj["segmentation"], height, width)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj["category_id"],
                "segmentation": obj["segmentation"],
                "area": float(mask_utils.area(rle)),
                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],  # x, y, w, h of the mask
                "iscrowd": 0,
            })
    payload = {
        "info": {"description": f"ablate {GENERATOR} v{VERSION}, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    annotation_file = folder / "annotations" / f"instances_{SPLIT_FOLDERS[split]}.json"
    annotation_file.parent.mkdir(exist_ok=True)
    annotation_file.write_text(json.dumps(payload))
    return {"images": len(images), "annotations": len(annotations)}


def generate_coco(
    root: str | Path,
    image_size: Sequence[int] = (96, 128),
    train_size: int = 64,
    val_size: int = 16,
    seed: int = 0,
    max_objects: int = 3,
) -> Path:
    """Generate (or find cached) a `coco-toy` dataset under `root`; return its folder.

    The folder is a COCO 2017 root: point a COCO task's data_root at it.
    """
    size = check_image_size(image_size, minimum=32)
    for key, value in (("train_size", train_size), ("val_size", val_size), ("max_objects", max_objects)):
        check_positive(key, value)
    check_seed(seed)
    params = {"image_size": list(size), "train_size": train_size, "val_size": val_size, "seed": seed,
              "max_objects": max_objects}

    def build(folder: Path) -> dict[str, dict[str, int]]:
        return {
            split: _write_split(folder, split, count, size, seed, max_objects)
            for split, count in (("train", train_size), ("val", val_size))
        }

    return cached_dataset(Path(root), GENERATOR, VERSION, params, build)
