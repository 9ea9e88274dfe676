"""A Hydra callback that checks, before anything is written, that the run's output folder is writable.

Hydra creates `hydra.run.dir` (a single run) or `hydra.sweep.dir` (a multirun) itself, before any
job code runs; on a read-only or full disk that fails with a traceback. This callback makes the
folder and writes a probe file in it first (on_run_start / on_multirun_start run before Hydra's own
mkdir), and on failure prints one line naming the folder and exits 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PROBE = ".ablate-write-probe"


def writable_or_exit(folder: Path) -> None:
    """Make `folder` and write (then remove) a probe file in it; on OSError print one line and exit 2."""
    probe = folder / f"{PROBE}.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x" * 4096)  # a block: a full disk refuses it
        probe.unlink()
    except OSError as exc:
        print(f"ablate: cannot write the output folder {folder}: {exc.strerror or exc} "
              "(set paths.results to a writable folder)", file=sys.stderr)
        sys.exit(2)


class WritableOutput(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        writable_or_exit(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        writable_or_exit(Path(str(config.hydra.sweep.dir)))
