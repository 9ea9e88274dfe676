"""What both launchers hand Hydra for a job that ended without a result of its own."""
# No `from __future__ import annotations`: see local_launcher.py.
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus


def failed_return(overrides: Sequence[str], error: BaseException) -> JobReturn:
    """A FAILED JobReturn carrying ``error``, which Hydra raises when it reads ``return_value``."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = error
    return ret
