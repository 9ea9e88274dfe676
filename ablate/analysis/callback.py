"""A Hydra callback that writes the report at the end of every multirun, whatever jobs failed, and
closes the sweep with one line: how many of its cells completed, failed or have no record.

Wired in conf/config.yaml:

    hydra:
      callbacks:
        report:
          _target_: ablate.analysis.callback.ReportCallback
          exit_with_outcome: true

With `exit_with_outcome`, a multirun whose sweep has a failed cell, or a cell without a record, ends
with exit status 1 from here: Hydra's `main` discards a multirun's return value, and the end of the
multirun is the last thing it does (callbacks declared after this one have run already: Hydra calls
`on_multirun_end` in reverse order).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

def sweep_outcome(sweep_dir: Path) -> tuple[str, int]:
    """("sweep NAME: 3 of 4 cells completed (1 reused from other sweeps), 1 failed", cells failed or
    without a record)."""
    from ablate.analysis.collect import MISSING_RECORD, UNREADABLE, collect
    from ablate.records import Status

    collection = collect([sweep_dir])
    statuses = collection.runs["status"].value_counts() if not collection.runs.empty else {}
    missing = int(collection.problems["kind"].isin([MISSING_RECORD, UNREADABLE]).sum())
    cells = len(collection.runs) + missing
    parts = [f"{int(statuses.get(s, 0))} {s}" for s in (Status.FAILED, Status.DIVERGED, Status.PRUNED, Status.SKIPPED)
             if statuses.get(s, 0)]
    parts += [f"{missing} without a record"] if missing else []
    runs = collection.runs
    # a completed record of another sweep: the cell was reused, not trained, in this one
    reused = int(((runs["status"] == Status.COMPLETED) & (runs["sweep"] != sweep_dir.name)).sum()) if len(runs) else 0
    line = f"sweep {sweep_dir.name}: {int(statuses.get(Status.COMPLETED, 0))} of {cells} cells completed"
    line += f" ({reused} reused from other sweeps)" if reused else ""
    return line + (f", {', '.join(parts)}" if parts else ""), int(statuses.get(Status.FAILED, 0)) + missing


class ReportCallback(Callback):
    """on_multirun_end -> ablate.analysis.report.write_report(hydra.sweep.dir), then the sweep's line.

    Never raises; with `exit_with_outcome`, ends the process with status 1 when a cell is unfinished."""

    def __init__(self, out_dir: str | None = None, hypotheses_dir: str | None = None,
                 exit_with_outcome: bool = False) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.hypotheses_dir = Path(hypotheses_dir) if hypotheses_dir else None
        self.exit_with_outcome = exit_with_outcome

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Add this leg's command to the sweep folder's legs file (the report lists every leg)."""
        import datetime as dt

        from ablate import secrets
        from ablate.analysis.collect import command_line, record_leg

        try:
            hydra = OmegaConf.to_container(config.hydra, resolve=False)
            record_leg(Path(str(config.hydra.sweep.dir)), secrets.redact(command_line(hydra)),
                       dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        except Exception as exc:  # noqa: BLE001 - the sweep runs without it; the report shows multirun.yaml's
            print(f"ablate: this leg's command was not recorded: {type(exc).__name__}: {exc}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        status = self.close_sweep(config)
        if status and self.exit_with_outcome:
            raise SystemExit(status)

    def close_sweep(self, config: DictConfig) -> int:
        """Write the sweep's report (and its wandb summary), print its line; return its exit status:
        1 when a cell failed or has no record, else 0."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            from ablate.analysis.report import write_report

            out_dir = self.out_dir or Path(str(config.paths.reports)) / sweep_dir.name
            path = write_report([sweep_dir], out_dir, self.hypotheses_dir)
            print(f"ablate: report written to {path}")
        except Exception as exc:  # noqa: BLE001 - a failed report must never fail the sweep
            print(f"ablate: no report for {sweep_dir}: {type(exc).__name__}: {' '.join(str(exc).split())}")
            path = None
        if path is not None:
            try:
                _log_to_wandb(config, sweep_dir, path)
            except Exception as exc:  # noqa: BLE001 - nor a tracker that fails
                print(f"ablate: the sweep's wandb summary was not logged: {type(exc).__name__}: {exc}")
        try:
            line, unfinished = sweep_outcome(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - e.g. the sweep folder was never made: every job failed to start
            line, unfinished = f"sweep {sweep_dir.name}: cells unknown ({type(exc).__name__}: {exc})", 1
        print(f"ablate: {line}")
        return 1 if unfinished else 0


def _log_to_wandb(config: DictConfig, sweep_dir: Path, report: Path) -> None:
    """The sweep's own wandb run, in its cells' group: the verdicts, one row per cell (status, the sweep
    it was reused from, factors, the primary metric), and report.md (logger=none: nothing)."""
    if "logger" not in config:  # an app of its own, without ablate's logger group
        return
    import pandas as pd

    from ablate import tracking
    from ablate.analysis.report import RESULTS_CSV, VERDICTS_CSV

    runs = pd.read_csv(report.parent / RESULTS_CSV)
    factors = [c for c in runs.columns if c in ("task", "seed") or c.startswith(("model.", "task."))]
    # a cell completed by an earlier sweep was reused here, not trained: its run is that sweep's
    cells = runs.assign(reused_from=[sweep if sweep != sweep_dir.name else "" for sweep in runs["sweep"]])
    tables = {"verdicts": pd.read_csv(report.parent / VERDICTS_CSV),
              "cells": cells[["run_id", "status", "reused_from", *factors, "metric", "value"]]}
    name = tracking.log_sweep(OmegaConf.to_container(config.logger, resolve=True), sweep_dir.name, sweep_dir, tables,
                              [report])
    if name is not None:
        print(f"ablate: the sweep's verdicts and cells are logged to wandb run {name} (group {sweep_dir.name})")

