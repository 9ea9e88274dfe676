"""Why a training run stopped before its planned end, as exceptions the job records by status.

Their own module, free of torch, so that the tuner (which raises Pruned from its pruning hook) and the
job can name them without importing the training loop.
"""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Pruned(Exception):
    """Raised by an on_eval hook to stop training early (a tuning trial's pruner): the job records
    the cell as pruned, not failed."""
