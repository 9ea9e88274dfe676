"""The default ImageNet recipe's augmentation (DeiT's RandAugment) is total on the installed Pillow."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import RandAugment

from ablate.config import compose
from ablate.tasks import classification
from ablate.tasks.classification import posterize, train_transform


def _imagenet_augment(size: int) -> tuple[tuple[int, int, int], dict]:
    """The augment settings `task=imagenet` builds, at a small output size."""
    task = classification.ImageFolderClassification(**{
        k: v for k, v in compose(["task=imagenet"]).task.items() if k != "_target_"} | {"image_size": [size, size]})
    return (3, size, size), task.augment


def test_posterize_zero_bits_is_black_and_others_match_pillow():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    assert np.asarray(posterize(img, 0)).max() == 0
    assert posterize(img, 0).size == img.size and posterize(img, 0).mode == img.mode
    for bits in (1, 4, 7):
        assert np.array_equal(np.asarray(posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits)))
    assert posterize(img, 8) is img
    with pytest.raises(ValueError):  # the installed Pillow is the one that rejects 0 bits
        ImageOps.posterize(img, 0)


def test_default_imagenet_transform_runs_over_20000_images():
    size, augment = _imagenet_augment(16)
    assert augment["auto_augment"] == "rand-m9-mstd0.5-inc1"  # the recipe under test is the default one
    transform = train_transform(size, **augment)
    (rand_augment,) = [t for t in transform.transforms if isinstance(t, RandAugment)]
    zero_bit_requests = []
    for op in rand_augment.ops:
        if op.name.startswith("Posterize"):
            def counted(img, bits, **kw):
                zero_bit_requests.append(bits <= 0)
                return posterize(img, bits, **kw)
            op.aug_fn = counted
    random.seed(0)
    torch.manual_seed(0)
    pixels = np.random.default_rng(0).integers(0, 256, (20_000, 20, 20, 3), dtype=np.uint8)
    for array in pixels:
        out = transform(Image.fromarray(array))
        assert out.shape == size
    # ~0.165% of images ask for 0 bits (m clipped at 10); they raised before the fix.
    assert sum(zero_bit_requests) >= 10
