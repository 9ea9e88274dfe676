"""Embedded datasets generated from a seed: no download, the standard ImageFolder layout
`<folder>/{train,val}/<class>/*.png`, cached per parameter set and safe to build concurrently.

- `generate_shapes`: short-sequence, fully-visible shape classification (the H1 analogue).
- `generate_pathfinder`: long-range "are the two markers connected?" (the H2 analogue).
- `generate_imagenet_toy`: ImageNet's on-disk layout (synset folders, JPEG files) for the offline
  pretrain-then-fine-tune chain.
- `cached_dataset`: the caching / atomic-publish helper the generators (and dense-task
  generators) are built on.
"""
from ablate.tasks.toydata.imagenet import generate_imagenet_toy
from ablate.tasks.toydata.imagefolder import cached_dataset, imagefolder_counts, read_meta, save_png
from ablate.tasks.toydata.pathfinder import (
    CLASSES as PATHFINDER_CLASSES,
    PathfinderSample,
    default_distractors,
    draw_pathfinder,
    generate_pathfinder,
)
from ablate.tasks.toydata.shapes import SHAPE_CLASSES, draw_shape, generate_shapes

__all__ = [
    "PATHFINDER_CLASSES",
    "SHAPE_CLASSES",
    "PathfinderSample",
    "cached_dataset",
    "default_distractors",
    "draw_pathfinder",
    "draw_shape",
    "generate_imagenet_toy",
    "generate_pathfinder",
    "generate_shapes",
    "imagefolder_counts",
    "read_meta",
    "save_png",
]
