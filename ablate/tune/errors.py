"""The one error type of the tuning package: bad configuration, reported in one line."""
from __future__ import annotations


class TuneConfigError(ValueError):
    """A tuning setting is invalid. The message names the key, the value and what is allowed."""
