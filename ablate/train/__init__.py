"""Training stage: `fit(model, task, trainer_cfg, run_dir, seed)` -> FitResult (see loop.py).

`fit`, `FitResult`, `Diverged` and `Pruned` are loaded on first use, so that `ablate.train.checkpoint` and
`ablate.train.preemption` stay cheap to import in a freshly started (e.g. requeued) job.
"""
from typing import Any

__all__ = ["Diverged", "FitResult", "Pruned", "fit"]


def __getattr__(name: str) -> Any:
    if name in ("Diverged", "Pruned"):
        from ablate.train import stops

        return getattr(stops, name)
    if name in __all__:
        from ablate.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'ablate.train' has no attribute {name!r}")
