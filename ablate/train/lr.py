"""The learning rate a trainer config asks for: its own module, so that what defines a cell
(ablate.cell) reads the rule without importing the training loop."""
from __future__ import annotations

from typing import Any


def effective_lr(cfg: Any) -> float:
    """trainer.lr if set, else the linear scaling rule lr_base * batch_size / lr_base_size."""
    return cfg.lr if cfg.lr is not None else cfg.lr_base * cfg.batch_size / cfg.lr_base_size
