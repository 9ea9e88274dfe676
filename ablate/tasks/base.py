"""The Task interface: the seam between the training loop and everything task-specific.

A Task owns its data (layout check, generation for embedded tasks), the network on top of the
Gated CNN backbone, the loss, evaluation and the name of its primary metric. The training loop
(`ablate.train`) calls only the methods below, so classification, detection and segmentation share
one loop, one result-record schema and one report.

Call order used by the loop:
    task.prepare()                       # check (or generate) data; raises DataError, one line
    model = task.build_model(model_cfg)  # backbone +/- SSM with this task's head
    for epoch ...:
        for batch in task.train_batches(batch_size, seed, epoch, start_batch, num_workers):
            loss = task.training_step(model, batch, device)
    metrics = task.evaluate(model, device)   # dict with task.metric in it
    # under DDP each rank evaluates its share, and rank 0 merges them:
    metrics = task.merge_metrics([task.evaluate_shard(model, device, rank, world) for rank in ranks])
    cost = task.cost(model)                  # params / macs / macs_ssm per image
"""
from __future__ import annotations

import abc
from typing import Annotated, Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ablate.records import TaskInfo  # noqa: F401 - part of the Task API: a task declares `info`
from ablate.rules import at_least, size_pair


class DataError(ValueError):
    """A dataset is missing or malformed. The message is one line: what was expected where."""


class Task(abc.ABC):
    """Base class of every task. Subclasses are instantiated from `cfg.task` via `_target_`."""

    info: TaskInfo
    image_size: tuple[int, int]  # (H, W) of the evaluated input: the sequence-length axis

    @abc.abstractmethod
    def prepare(self) -> None:
        """Check the on-disk layout (generate it first for embedded tasks). Raise DataError."""

    @abc.abstractmethod
    def build_model(self, model_cfg: Mapping[str, Any]) -> nn.Module:
        """The full network for this task: `ablate.models.build_model` backbone plus the head."""

    @abc.abstractmethod
    def num_train_samples(self) -> int:
        """Size of the training set (drives steps per epoch)."""

    def planned_train_samples(self) -> Optional[int]:
        """The training-set size when known without reading or writing any data (a generated
        dataset's configured size), else None: `ablate plan` then asks `prepare()` on data it only reads."""
        return None

    @abc.abstractmethod
    def train_batches(
        self, batch_size: int, seed: int, epoch: int, start_batch: int = 0, num_workers: int = 0
    ) -> Iterable[Any]:
        """Batches of one epoch in a fixed order given (seed, epoch), beginning at `start_batch`.

        The order must not depend on the model, so both arms of a paired comparison see the same
        data in the same order. Only full batches are yielded (drop_last).
        """

    @abc.abstractmethod
    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """Move the batch to `device`, run the model, return the scalar training loss."""

    @abc.abstractmethod
    def evaluate_shard(self, model: nn.Module, device: torch.device, rank: int = 0, world: int = 1) -> Any:
        """Evaluate on one rank's share of the validation split (its samples rank, rank + world, ...):
        a picklable partial result (sums, a confusion matrix, detections) for `merge_metrics`."""

    @abc.abstractmethod
    def merge_metrics(self, shards: Sequence[Any]) -> dict[str, float]:
        """All evaluation metrics (floats) from every rank's `evaluate_shard`; contains `info.metric`.
        Equal to one process's on the whole split: every sample counted once."""

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """All evaluation metrics on the whole validation split, in this process."""
        return self.merge_metrics([self.evaluate_shard(model, device)])

    @abc.abstractmethod
    def cost(self, model: nn.Module) -> dict[str, Any]:
        """Per-image cost at `image_size`: at least `params`, `macs`, `macs_ssm` (ints)."""

    def data_summary(self) -> dict[str, int]:
        """Facts about the data the cell really used, for the record's `data` block (after training):
        e.g. image counts and how many corrupt files were replaced. Default: none."""
        return {}

    def num_eval_samples(self) -> int | None:
        """Images in the evaluation split, for eval throughput (None: unknown, throughput not reported)."""
        return None

    def batch_size_of(self, batch: Any) -> int:
        """Number of images in a batch (for throughput). Default: first element's first dim."""
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        return len(first)

    def steps_per_epoch(self, batch_size: int, samples: Optional[int] = None) -> int:
        """Optimizer steps per epoch (drop_last) for `samples` training images (default: the prepared set's)."""
        if batch_size < 1:
            raise ValueError(f"trainer.batch_size={batch_size} must be a positive number of images")
        samples = self.num_train_samples() if samples is None else samples
        steps = samples // batch_size
        if steps < 1:
            raise DataError(
                f"trainer.batch_size={batch_size} is larger than the {self.info.name} training set "
                f"({samples} samples); use a smaller batch"
            )
        return steps


class SplitDatasetTask(Task):
    """A Task whose `prepare()` sets `self._train` and `self._val` to map-style datasets.

    Shares the counting and the epoch loader (EpochSampler order, seeded worker RNG, drop_last).
    Subclasses with per-epoch augmentation state override `epoch_dataset`, and set `collate_fn`
    when samples are not stackable tensors.
    """

    _train: Optional[Dataset] = None
    _val: Optional[Dataset] = None
    collate_fn: Optional[Callable] = None

    def _require_prepared(self) -> tuple[Dataset, Dataset]:
        if self._train is None or self._val is None:
            raise RuntimeError(f"task {self.info.name}: call prepare() before using the data")
        return self._train, self._val

    def num_train_samples(self) -> int:
        return len(self._require_prepared()[0])

    def num_eval_samples(self) -> int:
        return len(self._require_prepared()[1])

    def val_shard(self, rank: int, world: int) -> Dataset:
        """The validation samples rank, rank + world, ... (all of them for world = 1)."""
        val = self._require_prepared()[1]
        return val if world == 1 else Subset(val, range(rank, len(val), world))

    def epoch_dataset(self, seed: int, epoch: int) -> Dataset:
        """The training set as seen in one epoch (default: the same object every epoch)."""
        return self._require_prepared()[0]

    def train_batches(
        self, batch_size: int, seed: int, epoch: int, start_batch: int = 0, num_workers: int = 0
    ) -> Iterable[Any]:
        n = self.num_train_samples()
        return DataLoader(
            self.epoch_dataset(seed, epoch), batch_size=batch_size, drop_last=True, num_workers=num_workers,
            sampler=EpochSampler(n, batch_size, seed, epoch, start_batch), collate_fn=self.collate_fn,
            generator=worker_seed_generator(seed, epoch), pin_memory=torch.cuda.is_available(),
        )


class GeneratedScenesMixin:
    """The generator settings of the embedded dense tasks (coco_toy, ade20k_toy), kept as
    `self.generator_args` for the subclass's `prepare()` to write its dataset before loading it."""

    def __init__(
        self,
        train_size: Annotated[int, at_least(1)] = 64,
        val_size: Annotated[int, at_least(1)] = 16,
        data_seed: Annotated[int, at_least(0)] = 0,
        source_size: Annotated[Sequence[int], size_pair()] = (96, 128),  # generated images
        max_objects: Annotated[int, at_least(1)] = 3,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.generator_args = dict(
            image_size=tuple(source_size), train_size=train_size, val_size=val_size, seed=data_seed,
            max_objects=max_objects,
        )

    def planned_train_samples(self) -> int:
        return self.generator_args["train_size"]


class EpochSampler(Sampler[int]):
    """A permutation of range(n) fixed by (seed, epoch), cut to full batches, from `start_batch` on.

    Used by every task so the data order is a function of the seed alone (paired arms) and a
    resumed job continues mid-epoch exactly where it stopped.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
        full = (n // batch_size) * batch_size
        self.indices = order[start_batch * batch_size : full].tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def worker_seed_generator(seed: int, epoch: int) -> torch.Generator:
    """Generator for a DataLoader's worker base seed, so augmentation is fixed by (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + 7)
