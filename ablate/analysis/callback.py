"""A Hydra callback that writes the report at the end of every multirun, whatever jobs failed.

Wired in conf/config.yaml:

    hydra:
      callbacks:
        report:
          _target_: ablate.analysis.callback.ReportCallback
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReportCallback(Callback):
    """on_multirun_end -> ablate.analysis.report.write_report(hydra.sweep.dir). Never raises."""

    def __init__(self, out_dir: str | None = None, hypotheses_dir: str | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.hypotheses_dir = Path(hypotheses_dir) if hypotheses_dir else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = "(unknown sweep dir)"
        try:
            from ablate.analysis.report import write_report

            sweep_dir = str(config.hydra.sweep.dir)
            path = write_report([Path(sweep_dir)], self.out_dir, self.hypotheses_dir)
            print(f"ablate: report written to {path}")
        except Exception as exc:  # noqa: BLE001 - a failed report must never fail the sweep
            print(f"ablate: no report for {sweep_dir}: {type(exc).__name__}: {' '.join(str(exc).split())}")
