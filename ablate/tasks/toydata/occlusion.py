"""`occlusion`: occluded-line completion, a dense task whose hard pixels need information from far away.

    <folder>/images/{train,val}/000001.png   RGB PNG (lossless: the lines are 2-3 px wide)
    <folder>/labels/{train,val}/000001.png   8-bit grey PNG, same size: 0 background,
                                             1 visible line, 2 occluded line

Each scene: a smooth colour texture; `lines` thin curves (quadratic Béziers from edge to edge region,
2-3 px wide, random angle, curvature and colour); then opaque occluders (rectangles and ellipses of
`occluder_size` times the shorter image side, flat colour with faint noise) painted over them. A
line pixel under an occluder is *occluded*: the model sees only the occluder there and must infer
that a line runs beneath, from where the line enters and leaves it. Most occluders are centred on a
point of some line, so that nearly every scene has occluded pixels. Occluder sizes scale with the
image, so the distance to bridge, in pixels, grows with the input size (and in tokens it stays a
fixed fraction of the map). Every scene is drawn from its own numpy Generator seeded by
(seed, split, index).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ablate.tasks.toydata.imagefolder import (
    SPLIT_CODES, SPLITS, cached_dataset, check_image_size, check_positive, check_seed,
)

GENERATOR = "occlusion"
VERSION = 1
BACKGROUND, VISIBLE, OCCLUDED = 0, 1, 2
CLASSES = ("background", "visible", "occluded")


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float: a smooth random colour field (a few low-frequency waves) plus pixel noise."""
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    field = np.zeros((height, width, 3))
    for _ in range(4):
        freq, angle, phase = rng.uniform(1, 4), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xs * np.cos(angle) + ys * np.sin(angle)) + phase)
        field += wave[..., None] * rng.uniform(-25, 25, size=3)
    return field + rng.uniform(70, 185, size=3) + rng.normal(0, 6.0, size=(height, width, 3))


def _curve(rng: np.random.Generator, height: int, width: int, curvature: float) -> np.ndarray:
    """(n, 2) float (y, x) points, at most half a pixel apart, of a quadratic Bézier across the image."""
    centre = rng.uniform(0.2, 0.8, size=2) * (height, width)
    angle = rng.uniform(0, np.pi)
    half = rng.uniform(0.35, 0.7) * min(height, width)
    direction = np.array([np.sin(angle), np.cos(angle)])
    start, end = centre - half * direction, centre + half * direction
    bend = np.array([-direction[1], direction[0]]) * rng.uniform(-curvature, curvature) * half
    control = centre + bend
    steps = int(np.ceil(4 * half * (1 + curvature))) + 2
    t = np.linspace(0, 1, steps)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _stroke(points: np.ndarray, width_px: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies within width_px / 2 of some point of the curve."""
    mask = np.zeros((height, width), dtype=bool)
    radius = width_px / 2
    reach = int(np.ceil(radius))
    offsets = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    for dy, dx in offsets:
        # the pixel (cy + dy, cx + dx) around each point's pixel, kept when its centre is within the radius
        ys = np.floor(points[:, 0]).astype(int) + dy
        xs = np.floor(points[:, 1]).astype(int) + dx
        near = (ys + 0.5 - points[:, 0]) ** 2 + (xs + 0.5 - points[:, 1]) ** 2 <= radius**2
        inside = near & (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        mask[ys[inside], xs[inside]] = True
    return mask


def _occluder(rng: np.random.Generator, height: int, width: int, size: Sequence[float],
              centre: np.ndarray) -> np.ndarray:
    """(H, W) bool: a rectangle or ellipse of side size x the shorter image side, around `centre`."""
    h, w = rng.uniform(*size, size=2) * min(height, width)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    u, v = (xs - centre[1]) / (w / 2), (ys - centre[0]) / (h / 2)
    if rng.random() < 0.5:
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    return u**2 + v**2 <= 1.0


def draw_scene(
    rng: np.random.Generator, image_size: tuple[int, int], lines: Sequence[int], occluders: Sequence[int],
    occluder_size: Sequence[float], line_width: Sequence[float], curvature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: the (H, W, 3) uint8 image and its (H, W) uint8 labels (BACKGROUND/VISIBLE/OCCLUDED)."""
    height, width = image_size
    image = _texture(rng, height, width)
    drawn = np.zeros((height, width), dtype=bool)
    curves = []
    for _ in range(int(rng.integers(lines[0], lines[1] + 1))):
        points = _curve(rng, height, width, curvature)
        stroke = _stroke(points, rng.uniform(*line_width), height, width)
        # a saturated colour that stands out of the mid-grey texture
        colour = rng.permutation([rng.uniform(0, 40), rng.uniform(215, 255), rng.uniform(0, 255)])
        image[stroke] = colour
        drawn |= stroke
        curves.append(points)
    covered = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(occluders[0], occluders[1] + 1))):
        if curves and rng.random() < 0.8:  # on a line, so that the scene has something to infer
            points = curves[int(rng.integers(len(curves)))]
            centre = points[int(rng.integers(len(points)))]
        else:
            centre = rng.uniform(0, 1, size=2) * (height, width)
        shape = _occluder(rng, height, width, occluder_size, centre)
        image[shape] = rng.uniform(20, 235, size=3) + rng.normal(0, 3.0, size=(int(shape.sum()), 3))
        covered |= shape
    labels = np.full((height, width), BACKGROUND, dtype=np.uint8)
    labels[drawn & ~covered] = VISIBLE
    labels[drawn & covered] = OCCLUDED
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _range(key: str, value: Sequence, low: float, cast=float) -> tuple:
    """A [min, max] setting as a tuple; ValueError naming the key unless low <= min <= max."""
    pair = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair) \
            or not low <= pair[0] <= pair[1]:
        raise ValueError(f"task.{key}={value!r} is not allowed; expected [min, max] with {low} <= min <= max")
    return tuple(cast(v) for v in pair)


def generate_occlusion(
    root: str | Path,
    image_size: Sequence[int] = (96, 96),
    train_size: int = 2000,
    val_size: int = 200,
    seed: int = 0,
    lines: Sequence[int] = (3, 6),
    occluders: Sequence[int] = (2, 4),
    occluder_size: Sequence[float] = (0.15, 0.4),
    line_width: Sequence[float] = (2.0, 3.0),
    curvature: float = 0.5,
) -> Path:
    """Generate (or find cached) an `occlusion` dataset under `root`; return its folder."""
    size = check_image_size(image_size, minimum=32)
    for key, value in (("train_size", train_size), ("val_size", val_size)):
        check_positive(f"task.{key}", value)
    check_seed(seed)
    if isinstance(curvature, bool) or not isinstance(curvature, (int, float)) or not 0 <= curvature <= 2:
        raise ValueError(f"task.curvature={curvature!r} is not allowed; expected a number in [0, 2]")
    params = {
        "image_size": list(size), "train_size": train_size, "val_size": val_size, "seed": seed,
        "lines": list(_range("lines", lines, 1, int)), "occluders": list(_range("occluders", occluders, 0, int)),
        "occluder_size": list(_range("occluder_size", occluder_size, 0.01)),
        "line_width": list(_range("line_width", line_width, 1.0)), "curvature": float(curvature),
    }
    scene = {key: params[key] for key in ("lines", "occluders", "occluder_size", "line_width", "curvature")}

    def build(folder: Path) -> dict[str, int]:
        counts = {}
        for split, count in zip(SPLITS, (train_size, val_size)):
            image_dir, label_dir = folder / "images" / split, folder / "labels" / split
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
                image, labels = draw_scene(rng, size, **scene)
                Image.fromarray(image).save(image_dir / f"{index + 1:06d}.png", format="PNG")
                Image.fromarray(labels).save(label_dir / f"{index + 1:06d}.png", format="PNG")
            counts[split] = count
        return counts

    return cached_dataset(Path(root), GENERATOR, VERSION, params, build)
