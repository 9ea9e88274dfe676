"""Shared helpers for embedded (generated) datasets: caching, atomic publication, PNG writing.

Every generated dataset lives in its own folder `ROOT/<name>-<H>x<W>-s<seed>-<digest>`, where the
digest hashes the generator name, its version and all its parameters, so different sizes, seeds or
settings never share a folder. A dataset is built in a private temporary folder next to its final
place, `meta.json` is written last, and the folder is then renamed into place in one atomic step.
Readers therefore see either no folder or a complete one; when two processes (parallel sweep
jobs) build the same dataset at once, the first rename wins and the other copy is discarded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from ablate.tasks.base import DataError

META_FILE = "meta.json"
SPLITS = ("train", "val")
# Stable integer per split for seeding per-sample generators, so train and val never share draws.
SPLIT_CODES = {"train": 0, "val": 1}

BuildFn = Callable[[Path], Mapping[str, Any]]


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as they will read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dict(params), sort_keys=True))


def params_digest(name: str, version: int, params: Mapping[str, Any]) -> str:
    """Short hex digest of (generator name, version, parameters); the folder's identity."""
    canonical = json.dumps(
        {"name": name, "version": version, "params": _jsonable(params)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def dataset_dirname(name: str, version: int, params: Mapping[str, Any]) -> str:
    """`<name>-<H>x<W>-s<seed>-<digest>`; `params` must hold `image_size` (H, W) and `seed`."""
    for key in ("image_size", "seed"):
        if key not in params:
            raise ValueError(
                f"params must contain {key!r} to name the dataset folder; got keys {sorted(params)}"
            )
    height, width = params["image_size"]
    digest = params_digest(name, version, params)
    return f"{name}-{height}x{width}-s{params['seed']}-{digest}"


def read_meta(folder: Path) -> dict[str, Any]:
    """The parsed `meta.json` of a generated dataset folder."""
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} is missing: {folder} is not a complete generated dataset; delete it to regenerate"
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); delete {folder} to regenerate it") from None


def cached_dataset(root: Path, name: str, version: int, params: Mapping[str, Any], build: BuildFn) -> Path:
    """Return the folder of dataset (name, version, params) under `root`, building it if absent.

    `build(folder)` writes the dataset into the (empty, existing) `folder` and returns a JSON-able
    summary of what it wrote (e.g. image counts per split and class), stored in meta.json under
    "contents". A second call with the same arguments returns at once without touching the files.
    Safe against concurrent builders: each builds into its own temporary folder in `root` and the
    first atomic rename wins; a loser deletes its copy and returns the winner's folder.
    """
    root = Path(root)
    folder = root / dataset_dirname(name, version, params)
    expected = {"name": name, "version": version, "params": _jsonable(params)}
    if folder.exists():
        _check_meta(folder, expected)
        return folder

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=root))
    try:
        contents = build(tmp)
        meta = {**expected, "contents": contents}
        # meta.json last: a folder with meta.json is complete by construction.
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _publish(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _check_meta(folder, expected)
    return folder


def _publish(tmp: Path, folder: Path) -> None:
    """Atomically rename `tmp` to `folder`; if another process got there first, drop `tmp`."""
    try:
        os.rename(tmp, folder)
    except OSError:
        # Renaming a directory onto a non-empty one fails (ENOTEMPTY/EEXIST): we lost the race.
        if not (folder / META_FILE).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _check_meta(folder: Path, expected: Mapping[str, Any]) -> None:
    meta = read_meta(folder)
    found = {key: meta.get(key) for key in expected}
    if found != dict(expected):
        raise DataError(
            f"{folder / META_FILE} describes {found}, expected {dict(expected)}; "
            f"delete {folder} to regenerate it"
        )


def save_png(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an RGB PNG without metadata, so bytes are reproducible."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) uint8 array; got {image.dtype} of shape {image.shape}")
    Image.fromarray(image).save(path, format="PNG", compress_level=6)


def write_imagefolder(
    folder: Path, per_class: Mapping[str, int], classes: list[str], seed: int,
    draw: Callable[[np.random.Generator, int], np.ndarray],
    file_name: Callable[[str, str, int, int], str] = lambda split, name, index, number: f"{index:05d}.png",
    save: Callable[[Path, np.ndarray], None] = save_png,
) -> dict[str, dict[str, int]]:
    """Write folder/<split>/<class>/<file_name>, `per_class[split]` images per class.

    Every image gets its own generator, seeded from (seed, split, class index, image index), so
    the bytes do not depend on generation order. `draw(rng, class_index)` returns (H, W, 3) uint8;
    `file_name(split, class, index in class, number in split from 1)` names it (default <index>.png)
    and `save(path, image)` writes it. Returns the counts {split: {class: n}} for meta.json.
    """
    for split, count in per_class.items():
        for class_index, name in enumerate(classes):
            class_dir = folder / split / name
            class_dir.mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLIT_CODES[split], class_index, index])
                number = class_index * count + index + 1
                save(class_dir / file_name(split, name, index, number), draw(rng, class_index))
    return {split: {name: count for name in classes} for split, count in per_class.items()}


def imagefolder_counts(split_dir: Path) -> dict[str, int]:
    """{class folder: number of PNG files} of one ImageFolder split, classes sorted by name."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} is not a directory; expected an ImageFolder split <split>/<class>/*.png"
        )
    return {
        sub.name: sum(1 for _ in sub.glob("*.png"))
        for sub in sorted(split_dir.iterdir())
        if sub.is_dir()
    }


def is_int(value: Any) -> bool:
    """An integer that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_positive(name: str, value: Any) -> None:
    """One-line ValueError unless `value` is an int > 0 (bools are not counts)."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; expected a positive integer")


def check_image_size(image_size: Any, minimum: int = 1) -> tuple[int, int]:
    """Validate (H, W) as two ints >= `minimum`; return it as a tuple of Python ints."""
    ok = (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(is_int(v) and v >= minimum for v in image_size)
    )
    if not ok:
        raise ValueError(
            f"image_size={image_size!r} is not allowed; expected (H, W), two integers >= {minimum}"
        )
    return int(image_size[0]), int(image_size[1])


def check_seed(seed: Any) -> None:
    """One-line ValueError unless `seed` is an int >= 0 (numpy seed sequences need non-negative)."""
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed; expected an integer >= 0")
