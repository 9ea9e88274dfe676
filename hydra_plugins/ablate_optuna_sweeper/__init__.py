"""`hydra/sweeper=optuna_fair`: Optuna (>= 4, ask/tell) tuning with equal budgets per arm.

The Hydra-facing layer only; the logic lives in `ablate.tune` (see its package docstring).
"""
