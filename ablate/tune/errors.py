"""The one error type of the tuning package: bad configuration, reported in one line."""
from __future__ import annotations

from hydra.errors import CompactHydraException


class TuneConfigError(CompactHydraException, ValueError):
    """A tuning setting is invalid. The message names the key, the value and what is allowed.

    A CompactHydraException, so that Hydra's command line prints the message alone instead of a
    traceback (HYDRA_FULL_ERROR=1 still shows the traceback).
    """
