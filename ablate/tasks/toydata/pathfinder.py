"""`pathfinder`: an embedded long-range classification task (the H2 analogue), after the Long Range
Arena's Pathfinder (Linsley et al. 2018; Tay et al. 2021).

Every image holds dashed curves (3 px dashes, 2 px gaps, smooth random turning) and two marker
discs. Class `1_connected`: one curve joins the two markers. Class `0_disconnected`: the markers
end two different curves. Both classes place the markers at the two ends of a "virtual" path V,
a free random curve, so the marker positions (and their distance) have the same joint
distribution in both classes:

- connected: V is drawn, plus one companion curve placed at random;
- disconnected: V is not drawn; curve A starts at the first marker and curve B ends at the
  second, each a free random curve of V's length heading off in a random direction.

Every image thus holds two main curves plus `distractors` free curves, all of the same length:
equal ink and curve-end counts. What separates the classes is only where the curve leaving one
marker goes, which takes relating image regions up to a curve length apart. (Residual cue, as in
the LRA original: in a positive the curve at a marker tends to head towards the other marker;
reading it still needs both markers' surroundings, i.e. long-range mixing.) Samples in which a
curve other than V touches both marker discs are redrawn; both classes draw all candidate curves
and apply this same test, so redraws do not depend on the class.

Scaling with image size: curve length and the number of distractors grow linearly with the
usable side sqrt(h*w) (the frame less a margin) while dashes and markers keep their pixel size,
so ink density stays constant and a bigger image needs longer-range mixing. At a fixed size
`distractors` and `curve_length` set the hardness.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablate.tasks.toydata.imagefolder import (
    cached_dataset,
    check_image_size,
    check_seed,
    is_int,
    write_imagefolder,
)

GENERATOR = "pathfinder"
VERSION = 1
CLASSES = ("0_disconnected", "1_connected")  # ImageFolder sorts these to labels 0 and 1
SEGMENT_PX = 5.0  # step of a curve's random walk
DASH_FRACTION = 0.6  # drawn part of each step: 3 px dash, 2 px gap
MAX_TURN = 0.4  # radians; heading change per step is uniform in [-MAX_TURN, MAX_TURN]
MIN_SEGMENTS = 2  # shortest curve: two dashes
MARKER_RADIUS = 2  # px; endpoint discs
MARGIN = MARKER_RADIUS + 1  # curve points stay this far inside the frame
DISTRACTORS_PER_PX = 1 / 16  # default distractors per pixel of side
SAMPLES_PER_PX = 4  # rasterisation: points sampled per pixel of dash length
SHAPE_BATCH = 16  # fewest free shapes drawn per placement round
MAX_PLACEMENT_ROUNDS = 64  # placement rounds before giving up on a too-long curve
MAX_ANCHORINGS = 64  # curve shapes tried (as one batch) from a marker before a whole redraw
MAX_ATTEMPTS = 100  # whole-sample redraws (anchored curve did not fit, or ambiguous markers)
MIN_SIDE = 24  # smallest H or W: curves need room inside the margin


@dataclass(frozen=True)
class PathfinderSample:
    """One drawn sample with its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8, white ink on black
    curve_masks: np.ndarray  # (num_curves, H, W) bool, one per drawn curve; 0 and 1 are the main curves
    endpoints: tuple[tuple[int, int], tuple[int, int]]  # (y, x) of the two marker centres
    endpoint_curves: tuple[int, int]  # index in curve_masks of the curve each marker ends
    connected: bool


def image_side(image_size: tuple[int, int]) -> float:
    """sqrt(h*w) of the area curve points may use (the frame less MARGIN on each side): the
    length scale that curve length and distractor count grow with. 57 at 64x64, 201 at 208x208."""
    height, width = image_size
    return math.sqrt((height - 1 - 2 * MARGIN) * (width - 1 - 2 * MARGIN))


def default_distractors(image_size: tuple[int, int]) -> int:
    """Distractor curves used when none is given: side/16 (4 at 64x64, 13 at 208x208)."""
    return max(1, round(image_side(image_size) * DISTRACTORS_PER_PX))


def curve_segments(image_size: tuple[int, int], curve_length: float) -> int:
    """Dashes per curve for a curve `curve_length` * side pixels long (11 at 64x64, 40 at 208x208)."""
    return round(curve_length * image_side(image_size) / SEGMENT_PX)


def _free_shapes(rng: np.random.Generator, count: int, segments: int) -> np.ndarray:
    """(count, segments + 1, 2) float (x, y) points of free smooth random walks from the origin.

    Random start heading; before each SEGMENT_PX step the heading turns by U(-MAX_TURN, MAX_TURN).
    """
    start = rng.uniform(0.0, 2 * math.pi, size=(count, 1))
    headings = start + np.cumsum(rng.uniform(-MAX_TURN, MAX_TURN, size=(count, segments)), axis=1)
    steps = SEGMENT_PX * np.stack([np.cos(headings), np.sin(headings)], axis=-1)
    return np.concatenate([np.zeros((count, 1, 2)), np.cumsum(steps, axis=1)], axis=1)


def _box(image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest allowed (x, y) of a curve point."""
    height, width = image_size
    return np.array([MARGIN, MARGIN], float), np.array([width - 1 - MARGIN, height - 1 - MARGIN], float)


def _walks(rng: np.random.Generator, count: int, segments: int, image_size: tuple[int, int]) -> np.ndarray:
    """(count, segments + 1, 2) float (x, y) points of free smooth random walks placed in the frame.

    Shapes are drawn freely in batches; those whose bounding box fits are kept and shifted to a
    uniform random position. (Placing whole curves avoids curves that slide along the walls, as a
    walk deflected at the border would.)
    """
    low, high = _box(image_size)
    placed: list[np.ndarray] = []
    kept = 0
    for _ in range(MAX_PLACEMENT_ROUNDS):
        shapes = _free_shapes(rng, max(SHAPE_BATCH, 2 * (count - kept)), segments)
        slack = (high - low) - (shapes.max(axis=1) - shapes.min(axis=1))  # (batch, 2)
        take = np.flatnonzero((slack >= 0).all(axis=1))[: count - kept]
        offsets = low - shapes[take].min(axis=1) + rng.uniform(0.0, 1.0, size=(len(take), 2)) * slack[take]
        placed.append(shapes[take] + offsets[:, None, :])
        kept += len(take)
        if kept == count:
            return np.concatenate(placed)
    raise RuntimeError(
        f"curves of {segments} dashes rarely fit image_size={image_size} "
        f"({kept} of {count} placed in {MAX_PLACEMENT_ROUNDS} rounds); use a smaller curve_length"
    )


def _anchored(
    rng: np.random.Generator, segments: int, image_size: tuple[int, int], anchor: np.ndarray, at_end: bool
) -> np.ndarray | None:
    """A free walk shifted so its first point (or, with `at_end`, the end of its last dash) lies
    on `anchor`; the first of a batch of shapes that stays in the frame, or None if none does."""
    low, high = _box(image_size)
    shapes = _free_shapes(rng, MAX_ANCHORINGS, segments)
    if at_end:
        last_dash_end = shapes[:, -2] + DASH_FRACTION * (shapes[:, -1] - shapes[:, -2])
        placed = shapes - last_dash_end[:, None, :] + anchor
    else:
        placed = shapes + anchor
    fits = np.flatnonzero(((placed >= low) & (placed <= high)).all(axis=(1, 2)))
    return placed[fits[0]] if fits.size else None


def _dashes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (x, y) of each dash: the first DASH_FRACTION of every walk step."""
    starts = points[:-1]
    return starts, starts + DASH_FRACTION * (points[1:] - starts)


def _pixel(coordinate: np.ndarray) -> np.ndarray:
    """Pixel index of a coordinate; pixel i covers [i - 0.5, i + 0.5)."""
    return np.floor(coordinate + 0.5).astype(np.int64)


def _rasterise(curves: list[np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """(num_curves, H, W) bool masks of each curve's 1-px dashes, by dense point sampling."""
    samples = int(math.ceil(SEGMENT_PX * DASH_FRACTION * SAMPLES_PER_PX)) + 1
    t = np.linspace(0.0, 1.0, samples)[None, :, None]  # both dash ends included
    masks = np.zeros((len(curves), *image_size), dtype=bool)
    for index, points in enumerate(curves):
        starts, ends = _dashes(points)
        pts = starts[:, None, :] + t * (ends - starts)[:, None, :]  # (dashes, samples, 2)
        masks[index, _pixel(pts[..., 1]).ravel(), _pixel(pts[..., 0]).ravel()] = True
    return masks


def _disc(centre_yx: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool marker disc."""
    rows, cols = np.ogrid[: image_size[0], : image_size[1]]
    return (rows - centre_yx[0]) ** 2 + (cols - centre_yx[1]) ** 2 <= MARKER_RADIUS**2


def _touches(masks: np.ndarray, centre_yx: tuple[int, int]) -> np.ndarray:
    """(num_curves,) bool: which curve masks overlap the marker disc at `centre_yx`.

    Looks only at the disc's bounding window, which lies inside the frame because markers sit on
    curve points and those keep MARGIN > MARKER_RADIUS from the border.
    """
    y, x, r = centre_yx[0], centre_yx[1], MARKER_RADIUS
    window = masks[:, y - r : y + r + 1, x - r : x + r + 1]
    kernel = _disc((r, r), (2 * r + 1, 2 * r + 1))
    return (window & kernel).any(axis=(1, 2))


def _compose(
    rng: np.random.Generator, image_size: tuple[int, int], connected: bool, distractors: int, segments: int
) -> PathfinderSample | None:
    """One sample, or None when it must be redrawn (an anchored curve did not fit, or a curve other
    than V touches both markers).

    Both classes draw every candidate curve (V, companion, A, B, distractors) and apply the same
    acceptance test to them, so which samples are redrawn does not depend on the class and the
    marker positions keep the same distribution in both classes; only the drawn subset differs.
    """
    free = _walks(rng, distractors + 2, segments, image_size)  # [0] V, [1] companion, [2:] distractors
    virtual = free[0]
    start_xy, end_xy = virtual[0], _dashes(virtual)[1][-1]  # first point, end of the last dash
    first = _anchored(rng, segments, image_size, start_xy, at_end=False)  # A
    second = _anchored(rng, segments, image_size, end_xy, at_end=True)  # B
    if first is None or second is None:
        return None
    endpoints = (
        (int(_pixel(start_xy[1])), int(_pixel(start_xy[0]))),
        (int(_pixel(end_xy[1])), int(_pixel(end_xy[0]))),
    )
    masks = _rasterise([virtual, free[1], first, second, *free[2:]], image_size)
    touches_both = _touches(masks, endpoints[0]) & _touches(masks, endpoints[1])
    if touches_both[1:].any():
        return None
    main = [0, 1] if connected else [2, 3]  # (V, companion) or (A, B)
    masks = masks[main + list(range(4, len(masks)))]
    ink = masks.any(axis=0) | _disc(endpoints[0], image_size) | _disc(endpoints[1], image_size)
    image = np.repeat((ink * np.uint8(255))[..., None], 3, axis=2)
    return PathfinderSample(image, masks, endpoints, (0, 0) if connected else (0, 1), connected)


def draw_pathfinder(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    connected: bool,
    distractors: int,
    curve_length: float = 1.0,
) -> PathfinderSample:
    """Draw one sample from `rng`, redrawing (from the same stream) until it is unambiguous."""
    size = check_image_size(image_size, minimum=MIN_SIDE)
    segments = _check_hardness(size, distractors, curve_length)
    for _ in range(MAX_ATTEMPTS):
        sample = _compose(rng, size, connected, distractors, segments)
        if sample is not None:
            return sample
    raise RuntimeError(
        f"no valid pathfinder sample in {MAX_ATTEMPTS} draws at image_size={size}, "
        f"distractors={distractors}, curve_length={curve_length}: too crowded or too long for this size"
    )


def _check_hardness(image_size: tuple[int, int], distractors: Any, curve_length: Any) -> int:
    """Validate the hardness parameters; return dashes per curve."""
    if not is_int(distractors) or distractors < 0:
        raise ValueError(
            f"distractors={distractors!r} is not allowed; expected an integer >= 0, or None for the default"
        )
    if isinstance(curve_length, bool) or not isinstance(curve_length, (int, float)) or not curve_length > 0:
        raise ValueError(
            f"curve_length={curve_length!r} is not allowed; expected a number > 0 (times the usable side)"
        )
    segments = curve_segments(image_size, curve_length)
    if segments < MIN_SEGMENTS:
        raise ValueError(
            f"curve_length={curve_length!r} gives {segments} dashes at image_size={image_size}; "
            f"allowed: a length giving at least {MIN_SEGMENTS} dashes of {SEGMENT_PX:g} px"
        )
    return segments


def _check_split_size(name: str, value: Any) -> None:
    if not is_int(value) or value <= 0 or value % 2:
        raise ValueError(
            f"{name}={value!r} is not allowed; expected a positive even integer (two balanced classes)"
        )


def generate_pathfinder(
    root: Path,
    image_size: tuple[int, int],
    train_size: int,
    val_size: int,
    seed: int,
    distractors: int | None = None,
    curve_length: float = 1.0,
) -> Path:
    """Generate (or reuse) pathfinder as ROOT/<folder>/{train,val}/{0_disconnected,1_connected}/*.png.

    `train_size` and `val_size` count both classes (half each). `distractors` defaults to
    `default_distractors(image_size)`; `curve_length` is in units of `image_side(image_size)`.
    Very elongated frames need curve_length < 1 (a curve must fit; else RuntimeError).
    Returns the dataset folder; see `cached_dataset` for naming, caching and concurrency.
    """
    size = check_image_size(image_size, minimum=MIN_SIDE)
    _check_split_size("train_size", train_size)
    _check_split_size("val_size", val_size)
    check_seed(seed)
    n_distractors = default_distractors(size) if distractors is None else distractors
    segments = _check_hardness(size, n_distractors, curve_length)
    per_class = {"train": int(train_size) // 2, "val": int(val_size) // 2}
    params: dict[str, Any] = {
        "image_size": list(size),
        "seed": int(seed),
        "train_size": int(train_size),
        "val_size": int(val_size),
        "distractors": int(n_distractors),
        "curve_length": float(curve_length),
        "curve_segments": segments,
    }

    def build(folder: Path) -> dict[str, dict[str, int]]:
        def draw(rng: np.random.Generator, label: int) -> np.ndarray:
            return draw_pathfinder(rng, size, bool(label), int(n_distractors), curve_length).image

        return write_imagefolder(folder, per_class, list(CLASSES), seed, draw)

    return cached_dataset(Path(root), GENERATOR, VERSION, params, build)
