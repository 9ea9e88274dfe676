"""What both launchers share: the outcome they hand Hydra for a job that ended without a result of its
own, and which jobs of a batch wait for which (fine-tuning cells for their upstream cells)."""
# No `from __future__ import annotations`: see local_launcher.py.
from typing import Any, Dict, List, Sequence

from hydra.core.utils import JobReturn, JobStatus


def failed_return(overrides: Sequence[str], error: BaseException) -> JobReturn:
    """A FAILED JobReturn carrying ``error``, which Hydra raises when it reads ``return_value``."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = error
    return ret


def upstream_jobs(numbers: Sequence[int], configs: Sequence[Any]) -> Dict[int, List[int]]:
    """{job number: numbers of the jobs it waits for}, from each job's composed config: a cell with
    task.backbone_from waits for the job of its upstream cell (ablate.chain), if the batch has it."""
    from ablate import cell, chain

    deps = chain.dependencies([cell.chain_view(config) for config in configs])
    return {n: [numbers[up] for up in ups] for n, ups in zip(numbers, deps)}
