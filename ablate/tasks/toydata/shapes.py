"""`shapes`: an embedded short-sequence, fully-visible classification task (the H1 analogue).

Each image shows one procedural shape (circle, square, ..., a dotted patch) in a random colour,
at a random position, scale and rotation, over a random-coloured background with smooth
low-frequency texture and per-pixel noise. Colour carries no class information; the class is the
geometry alone. Shapes are rasterised analytically with 4x4 supersampling (anti-aliased edges), so
the task is learnable at 32x32 yet not solved by a colour or brightness statistic.

Every sample is drawn from its own numpy Generator seeded by (seed, split, class, index), so a
sample does not depend on how many others are generated and the PNG bytes are reproducible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ablate.tasks.toydata.imagefolder import (
    cached_dataset,
    check_image_size,
    check_positive,
    check_seed,
    is_int,
    write_imagefolder,
)

GENERATOR = "shapes"
VERSION = 1
SUPERSAMPLE = 4  # sub-pixel samples per axis for anti-aliased coverage
RADIUS_RANGE = (0.2, 0.4)  # shape half-size as a fraction of min(H, W)
STRIPE_TILT = np.deg2rad(20.0)  # stripes rotate at most this much so horizontal != vertical
TEXTURE_GRID = 4  # control points per axis of the smooth background texture
TEXTURE_AMPLITUDE = (8.0, 40.0)  # std of the texture, grey levels
NOISE_SIGMA = (3.0, 15.0)  # std of per-pixel noise, grey levels
MIN_CONTRAST = 70  # at least one RGB channel differs this much between shape and background

# Inside tests in the shape's own frame: (u, v) scaled so the shape's half-size is 1.
Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _polygon(normal_angles_deg: tuple[float, ...], inradius: float) -> Inside:
    """Convex polygon as the intersection of half-planes with outward normals at given angles."""
    normals = np.deg2rad(np.array(normal_angles_deg))

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        result = np.ones(u.shape, dtype=bool)
        for phi in normals:
            result &= u * np.cos(phi) + v * np.sin(phi) <= inradius
        return result

    return inside


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points: radius 1 at the tips, 0.42 between them, linear in angle.
    phase = (np.arctan2(v, u) * 5 / (2 * np.pi)) % 1.0
    tip_closeness = np.abs(2 * phase - 1)
    return np.hypot(u, v) <= 0.42 + 0.58 * tip_closeness


def _patch(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.9


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Two bars of half-width 0.28 and half-length 1.
    near, far = np.minimum(np.abs(u), np.abs(v)), np.maximum(np.abs(u), np.abs(v))
    return (near <= 0.28) & (far <= 1.0)


def _checker(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # 4x4 cells of side 0.45 over the patch.
    return _patch(u, v) & ((np.floor((u + 0.9) / 0.45) + np.floor((v + 0.9) / 0.45)) % 2 == 0)


def _dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # 3x3 grid of dots with centres at -0.6, 0, 0.6 on each axis, dot radius 0.2.
    du = u - 0.6 * np.clip(np.round(u / 0.6), -1, 1)
    dv = v - 0.6 * np.clip(np.round(v / 0.6), -1, 1)
    return np.hypot(du, dv) <= 0.2


_SHAPES: dict[str, Inside] = {
    "circle": lambda u, v: np.hypot(u, v) <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": _polygon((270.0, 30.0, 150.0), 0.5),  # equilateral, circumradius 1
    "star": _star,
    "cross": _cross,
    "ring": lambda u, v: (np.hypot(u, v) <= 1.0) & (np.hypot(u, v) >= 0.55),
    # Three stripes over the 1.8-wide patch (period 0.6, half on).
    "stripes_h": lambda u, v: _patch(u, v) & (((v + 0.9) % 0.6) < 0.3),
    "stripes_v": lambda u, v: _patch(u, v) & (((u + 0.9) % 0.6) < 0.3),
    "checker": _checker,
    "dots": _dots,
    "ellipse": lambda u, v: np.hypot(u, v / 0.55) <= 1.0,
    "hexagon": _polygon((0.0, 60.0, 120.0, 180.0, 240.0, 300.0), np.cos(np.pi / 6)),
}
SHAPE_CLASSES: tuple[str, ...] = tuple(_SHAPES)  # num_classes=n uses the first n
_LIMITED_ROTATION = {"stripes_h", "stripes_v"}


def shape_coverage(
    shape: str, image_size: tuple[int, int], centre_xy: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """(H, W) float fraction of each pixel covered by `shape` (pixel (i, j) spans [j, j+1) x [i, i+1)).

    `radius` is the half-size in pixels, `angle` the rotation in radians.
    """
    if shape not in _SHAPES:
        raise ValueError(f"shape={shape!r} is not allowed; expected one of {list(SHAPE_CLASSES)}")
    height, width = image_size
    ys = (np.arange(height * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - centre_xy[1]
    xs = (np.arange(width * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - centre_xy[0]
    dy, dx = np.meshgrid(ys, xs, indexing="ij")
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / radius  # rotate by -angle into the shape's frame
    v = (-sin * dx + cos * dy) / radius
    inside = _SHAPES[shape](u, v).astype(np.float32)
    return inside.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))


def _smooth_field(rng: np.random.Generator, image_size: tuple[int, int], amplitude: float) -> np.ndarray:
    """(H, W, 3) smooth random texture: a TEXTURE_GRID^2 Gaussian grid, bilinearly interpolated."""
    height, width = image_size
    grid = rng.normal(0.0, amplitude, size=(3, TEXTURE_GRID, TEXTURE_GRID))
    interp_y = _linear_weights(height, TEXTURE_GRID)  # (H, G)
    interp_x = _linear_weights(width, TEXTURE_GRID)  # (W, G)
    return np.einsum("hg,cgk,wk->hwc", interp_y, grid, interp_x)


def _linear_weights(n: int, grid: int) -> np.ndarray:
    """(n, grid) matrix mapping grid values to n evenly spaced samples by linear interpolation."""
    pos = np.linspace(0.0, grid - 1, n)
    lower = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = pos - lower
    weights = np.zeros((n, grid))
    weights[np.arange(n), lower] = 1.0 - frac
    weights[np.arange(n), lower + 1] = frac
    return weights


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Random RGB colour with one random channel at least MIN_CONTRAST away from the background."""
    colour = rng.integers(0, 256, size=3)
    channel = rng.integers(0, 3)
    allowed = np.array([v for v in range(256) if abs(v - int(background[channel])) >= MIN_CONTRAST])
    colour[channel] = allowed[rng.integers(0, len(allowed))]
    return colour


def draw_shape(rng: np.random.Generator, image_size: tuple[int, int], shape: str) -> np.ndarray:
    """One (H, W, 3) uint8 image of `shape` with random colour, pose, texture and noise."""
    height, width = image_size
    radius = rng.uniform(*RADIUS_RANGE) * min(height, width)
    # Centre so that at most a 10% rim of the shape leaves the frame.
    centre = (
        rng.uniform(0.9 * radius, width - 0.9 * radius),
        rng.uniform(0.9 * radius, height - 0.9 * radius),
    )
    if shape in _LIMITED_ROTATION:
        angle = rng.uniform(-STRIPE_TILT, STRIPE_TILT)
    else:
        angle = rng.uniform(0.0, 2 * np.pi)
    background = rng.integers(0, 256, size=3)
    foreground = _contrasting_colour(rng, background)
    texture = _smooth_field(rng, image_size, rng.uniform(*TEXTURE_AMPLITUDE))
    noise = rng.normal(0.0, rng.uniform(*NOISE_SIGMA), size=(height, width, 3))

    alpha = shape_coverage(shape, image_size, centre, radius, angle)[..., None]
    image = (background + texture) * (1.0 - alpha) + foreground * alpha + noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_shapes(
    root: Path,
    image_size: tuple[int, int],
    train_per_class: int,
    val_per_class: int,
    seed: int,
    num_classes: int = 10,
) -> Path:
    """Generate (or reuse) the shapes dataset as ROOT/<folder>/{train,val}/<class>/*.png.

    Returns the dataset folder; see `cached_dataset` for naming, caching and concurrency.
    """
    size = check_image_size(image_size, minimum=8)
    check_positive("train_per_class", train_per_class)
    check_positive("val_per_class", val_per_class)
    check_seed(seed)
    if not is_int(num_classes) or not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(
            f"num_classes={num_classes!r} is not allowed; expected an integer in [2, {len(SHAPE_CLASSES)}]"
        )
    classes = SHAPE_CLASSES[:num_classes]
    per_class = {"train": int(train_per_class), "val": int(val_per_class)}
    params: dict[str, Any] = {
        "image_size": list(size),
        "seed": int(seed),
        "train_per_class": per_class["train"],
        "val_per_class": per_class["val"],
        "num_classes": int(num_classes),
        "classes": list(classes),
    }

    def build(folder: Path) -> dict[str, dict[str, int]]:
        return write_imagefolder(folder, per_class, list(classes), seed, lambda rng, i: draw_shape(rng, size, classes[i]))

    return cached_dataset(Path(root), GENERATOR, VERSION, params, build)
