"""Training stage: `fit(model, task, trainer_cfg, run_dir, seed)` -> FitResult. See loop.py."""
from ablate.train.loop import Diverged, FitResult, fit

__all__ = ["Diverged", "FitResult", "fit"]
