"""Embedded datasets: layout, determinism, caching, concurrency, label correctness, validation."""
from __future__ import annotations

import json
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ablate.tasks.base import DataError
from ablate.tasks.toydata import (
    SHAPE_CLASSES,
    cached_dataset,
    default_distractors,
    draw_pathfinder,
    draw_shape,
    generate_pathfinder,
    generate_shapes,
    imagefolder_counts,
    read_meta,
    save_png,
)
from ablate.tasks.toydata.pathfinder import MARKER_RADIUS, curve_segments
from ablate.tasks.toydata.shapes import shape_coverage


def _files(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file below `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _pngs(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(folder).items() if k.endswith(".png")}


# --- layout -------------------------------------------------------------------------------------


def test_shapes_layout_counts_sizes_and_meta(tmp_path):
    folder = generate_shapes(tmp_path, (24, 40), train_per_class=3, val_per_class=2, seed=0, num_classes=4)
    assert folder.parent == tmp_path and folder.name.startswith("shapes-24x40-s0-")
    assert imagefolder_counts(folder / "train") == {name: 3 for name in sorted(SHAPE_CLASSES[:4])}
    assert imagefolder_counts(folder / "val") == {name: 2 for name in sorted(SHAPE_CLASSES[:4])}
    for path in folder.rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (40, 24)  # PIL size is (W, H)
    meta = read_meta(folder)
    assert meta["name"] == "shapes" and meta["version"] >= 1
    assert meta["params"] == {
        "image_size": [24, 40], "seed": 0, "train_per_class": 3, "val_per_class": 2,
        "num_classes": 4, "classes": list(SHAPE_CLASSES[:4]),
    }
    assert meta["contents"]["train"] == {name: 3 for name in SHAPE_CLASSES[:4]}


def test_pathfinder_layout_balanced_and_non_square(tmp_path):
    folder = generate_pathfinder(tmp_path, (32, 48), train_size=6, val_size=4, seed=1)
    assert folder.name.startswith("pathfinder-32x48-s1-")
    assert imagefolder_counts(folder / "train") == {"0_disconnected": 3, "1_connected": 3}
    assert imagefolder_counts(folder / "val") == {"0_disconnected": 2, "1_connected": 2}
    for path in folder.rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (48, 32)
    assert read_meta(folder)["params"]["distractors"] == default_distractors((32, 48))


def test_timm_reads_the_layout(tmp_path):
    from timm.data import create_dataset

    shapes = generate_shapes(tmp_path, (16, 16), 2, 1, seed=0, num_classes=3)
    train = create_dataset("", root=str(shapes), split="train")
    assert len(train) == 6
    assert train.reader.class_to_idx == {name: i for i, name in enumerate(sorted(SHAPE_CLASSES[:3]))}
    image, label = train[0]
    assert image.size == (16, 16) and 0 <= label < 3

    pathfinder = generate_pathfinder(tmp_path, (24, 32), 4, 2, seed=0)
    val = create_dataset("", root=str(pathfinder / "val"))
    assert len(val) == 2 and val.reader.class_to_idx == {"0_disconnected": 0, "1_connected": 1}
    assert sorted(val[i][1] for i in range(2)) == [0, 1]


# --- determinism and caching -------------------------------------------------------------------


@pytest.mark.parametrize(
    "generate",
    [
        lambda root, seed: generate_shapes(root, (20, 28), 2, 1, seed=seed, num_classes=3),
        lambda root, seed: generate_pathfinder(root, (24, 40), 4, 2, seed=seed),
    ],
    ids=["shapes", "pathfinder"],
)
def test_same_parameters_give_identical_bytes_and_seeds_differ(tmp_path, generate):
    first = generate(tmp_path / "a", 5)
    second = generate(tmp_path / "b", 5)
    assert first.name == second.name
    assert _files(first) == _files(second)
    other = generate(tmp_path / "a", 6)
    assert other != first
    a, b = _pngs(first), _pngs(other)
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


def test_second_call_reuses_the_folder_without_rewriting(tmp_path):
    folder = generate_pathfinder(tmp_path, (24, 24), 4, 2, seed=0)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    time.sleep(0.01)
    assert generate_pathfinder(tmp_path, (24, 24), 4, 2, seed=0) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folders left


def test_different_parameters_never_share_a_folder(tmp_path):
    folders = {
        generate_shapes(tmp_path, (16, 16), 1, 1, seed=0, num_classes=2),
        generate_shapes(tmp_path, (16, 16), 2, 1, seed=0, num_classes=2),
        generate_shapes(tmp_path, (16, 16), 1, 1, seed=0, num_classes=3),
        generate_shapes(tmp_path, (16, 20), 1, 1, seed=0, num_classes=2),
        generate_pathfinder(tmp_path, (24, 24), 2, 2, seed=0),
        generate_pathfinder(tmp_path, (24, 24), 2, 2, seed=0, distractors=2),
        generate_pathfinder(tmp_path, (24, 24), 2, 2, seed=0, curve_length=0.8),
    }
    assert len(folders) == 7 and len(list(tmp_path.iterdir())) == 7


# --- cached_dataset: races, failures, foreign folders ----------------------------------------------

PARAMS = {"image_size": [4, 4], "seed": 0, "n": 1}


def _writer(text: str):
    def build(folder: Path) -> dict:
        (folder / "x.txt").write_text(text)
        return {"files": 1}

    return build


def test_lost_race_keeps_the_winner_and_discards_own_copy(tmp_path):
    def loser(folder: Path) -> dict:
        (folder / "x.txt").write_text("loser")
        # Meanwhile another process finishes the same dataset first.
        cached_dataset(tmp_path, "toy", 1, PARAMS, _writer("winner"))
        return {"files": 1}

    out = cached_dataset(tmp_path, "toy", 1, PARAMS, loser)
    assert (out / "x.txt").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert read_meta(out)["contents"] == {"files": 1}


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(folder: Path) -> dict:
        (folder / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cached_dataset(tmp_path, "toy", 1, PARAMS, broken)
    assert list(tmp_path.iterdir()) == []


def test_folder_without_or_with_foreign_meta_is_an_error(tmp_path):
    out = cached_dataset(tmp_path, "toy", 1, PARAMS, _writer("a"))
    meta = json.loads((out / "meta.json").read_text())
    meta["params"]["n"] = 2
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="delete"):
        cached_dataset(tmp_path, "toy", 1, PARAMS, _writer("a"))
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json is missing"):
        cached_dataset(tmp_path, "toy", 1, PARAMS, _writer("a"))


def test_version_is_part_of_the_identity(tmp_path):
    assert cached_dataset(tmp_path, "toy", 1, PARAMS, _writer("a")) != cached_dataset(
        tmp_path, "toy", 2, PARAMS, _writer("a")
    )


def _generate_after_barrier(root: Path, barrier, results) -> None:
    barrier.wait(timeout=60)  # both processes start building at the same moment
    results.put(str(generate_pathfinder(root, (32, 32), 40, 10, seed=3)))


def test_two_processes_generating_at_once_leave_one_valid_copy(tmp_path, reap):
    # fork: a child starts in milliseconds (no re-import of torch), so the two builds overlap.
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    root = tmp_path / "data"
    procs = [reap(context.Process(target=_generate_after_barrier, args=(root, barrier, results))) for _ in range(2)]
    for proc in procs:
        proc.start()
    paths = {results.get(timeout=120) for _ in procs}
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert len(paths) == 1
    folder = Path(paths.pop())
    assert [p.name for p in root.iterdir()] == [folder.name]
    reference = generate_pathfinder(tmp_path / "ref", (32, 32), 40, 10, seed=3)
    assert _files(folder) == _files(reference)


# --- pathfinder ground truth -------------------------------------------------------------------


def _traced(mask: np.ndarray) -> np.ndarray:
    """Connected components of a dashed curve: 3x3 dilation bridges the 2 px dash gaps."""
    labels, _ = ndimage.label(ndimage.binary_dilation(mask, np.ones((3, 3))), np.ones((3, 3)))
    return labels


@pytest.mark.parametrize("image_size", [(64, 64), (40, 96)])
def test_pathfinder_labels_match_the_curves(image_size):
    distractors = default_distractors(image_size)
    for index in range(12):
        connected = bool(index % 2)
        sample = draw_pathfinder(np.random.default_rng([7, index]), image_size, connected, distractors)
        (y1, x1), (y2, x2) = sample.endpoints
        i, j = sample.endpoint_curves
        masks = sample.curve_masks
        assert masks.shape == (distractors + 2, *image_size)
        assert masks[i, y1, x1] and masks[j, y2, x2]  # each marker sits on its curve's pixels
        on_both = [k for k in range(len(masks)) if masks[k, y1, x1] and masks[k, y2, x2]]
        if connected:
            assert i == j and on_both == [i]
            # Following the dashes of curve i leads from one marker to the other.
            labels = _traced(masks[i])
            assert labels[y1, x1] == labels[y2, x2] != 0
        else:
            assert i != j and on_both == []
            assert not _traced(masks[i])[y2, x2] and not _traced(masks[j])[y1, x1]
        ink = sample.image[..., 0] > 0
        assert (sample.image[..., 0] == sample.image[..., 2]).all()
        assert (ink[masks.any(axis=0)]).all() and sample.image.dtype == np.uint8
        assert ink[y1 - MARKER_RADIUS : y1 + MARKER_RADIUS + 1, x1].all()  # marker disc drawn


def test_pathfinder_classes_share_marker_statistics_and_ink():
    """Markers come from the same virtual path in both classes, so their distance and the ink
    amount must not separate the classes (averages over 40 samples per class agree closely)."""
    size, stats = (48, 48), {}
    for connected in (False, True):
        dist, ink = [], []
        for index in range(40):
            sample = draw_pathfinder(np.random.default_rng([11, int(connected), index]), size, connected, 3)
            (y1, x1), (y2, x2) = sample.endpoints
            dist.append(math.hypot(y1 - y2, x1 - x2))
            ink.append((sample.image[..., 0] > 0).mean())
        stats[connected] = (np.mean(dist), np.mean(ink))
    assert abs(stats[True][0] - stats[False][0]) < 4.0  # pixels; curves are ~48 px long
    assert abs(stats[True][1] - stats[False][1]) < 0.15 * stats[True][1]


def test_pathfinder_difficulty_grows_with_image_side():
    assert default_distractors((64, 64)) == 4 and default_distractors((208, 208)) == 13
    # Curves span the usable side sqrt(h*w), h = H - 7 and w = W - 7 (3 px margins): 57 and 201 px.
    assert curve_segments((64, 64), 1.0) == 11 and curve_segments((208, 208), 1.0) == 40
    assert curve_segments((208, 208), 0.5) == 20


# --- shapes ground truth -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, area",
    [
        ("circle", math.pi),
        ("square", 1.6**2),
        ("ring", math.pi * (1 - 0.55**2)),
        ("ellipse", math.pi * 0.55),
        ("triangle", 3 * math.sqrt(3) / 4),  # equilateral, circumradius 1
        ("hexagon", 3 * math.sqrt(3) / 2),
        ("stripes_h", 1.8 * 0.9),  # three 0.3-wide stripes across a 1.8-wide patch
    ],
)
def test_shape_coverage_has_the_known_area(shape, area):
    radius = 12.0
    angle = 0.0 if shape == "stripes_h" else 0.3  # stripes: an unrotated patch cuts whole stripes
    coverage = shape_coverage(shape, (48, 48), (24.0, 24.0), radius, angle)
    assert coverage.min() >= 0 and coverage.max() <= 1
    assert coverage.sum() == pytest.approx(area * radius**2, rel=0.03)


def test_stripes_horizontal_and_vertical_are_transposes():
    horizontal = shape_coverage("stripes_h", (40, 40), (20.0, 20.0), 10.0, 0.0)
    vertical = shape_coverage("stripes_v", (40, 40), (20.0, 20.0), 10.0, 0.0)
    np.testing.assert_allclose(horizontal, vertical.T)
    assert (horizontal.sum(axis=1) > 0).sum() < (horizontal.sum(axis=0) > 0).sum()  # rows are gaps


def test_draw_shape_is_deterministic_rgb_uint8_and_colourful():
    images = [draw_shape(np.random.default_rng(3), (20, 30), "star") for _ in range(2)]
    assert images[0].shape == (20, 30, 3) and images[0].dtype == np.uint8
    np.testing.assert_array_equal(*images)
    means = [draw_shape(np.random.default_rng(i), (20, 30), "star").mean(axis=(0, 1)) for i in range(5)]
    assert np.ptp(np.array(means), axis=0).max() > 30  # colours vary from sample to sample


# --- input validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"image_size": (0, 32)}, "image_size"),
        ({"image_size": (32,)}, "image_size"),
        ({"image_size": (32.0, 32)}, "image_size"),
        ({"train_per_class": 0}, "train_per_class"),
        ({"val_per_class": -2}, "val_per_class"),
        ({"train_per_class": True}, "train_per_class"),
        ({"seed": -1}, "seed"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": len(SHAPE_CLASSES) + 1}, "num_classes"),
    ],
)
def test_shapes_bad_input_is_one_clear_line(tmp_path, kwargs, name):
    args = {"image_size": (16, 16), "train_per_class": 1, "val_per_class": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError) as err:
        generate_shapes(tmp_path, **args)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{name}={kwargs[name]!r} is not allowed; expected")
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"image_size": (16, 64)}, "image_size"),
        ({"train_size": 7}, "train_size"),
        ({"val_size": 0}, "val_size"),
        ({"seed": 1.5}, "seed"),
        ({"distractors": -1}, "distractors"),
        ({"curve_length": 0}, "curve_length"),
        ({"curve_length": 0.05}, "curve_length"),
    ],
)
def test_pathfinder_bad_input_is_one_clear_line(tmp_path, kwargs, name):
    args = {"image_size": (32, 32), "train_size": 2, "val_size": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError) as err:
        generate_pathfinder(tmp_path, **args)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{name}={kwargs[name]!r}")
    assert "allowed" in message


def test_too_long_curves_fail_with_a_clear_message(tmp_path):
    with pytest.raises(RuntimeError, match="curve_length"):
        generate_pathfinder(tmp_path, (24, 24), 2, 2, seed=0, curve_length=3.0)
    assert list(tmp_path.iterdir()) == []  # the half-built temporary folder was removed


def test_save_png_rejects_non_rgb_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
