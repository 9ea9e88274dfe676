"""Experiment tracking: one wandb run per job, offline under the run folder when there is no API key.

The run id is kept in <run_dir>/wandb_id so that a requeued or resumed job continues the same wandb
run instead of starting a new one; a fresh attempt at a completed cell (+rerun=all) gets a new id.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from ablate import secrets

log = logging.getLogger("ablate.tracking")
MODES = ("online", "offline", "disabled")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_mode(configured: Optional[str]) -> str:
    """logger.mode if set, else WANDB_MODE, else online with an API key and offline without one."""
    mode = configured or os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")
    if mode not in MODES:
        raise ValueError(f"logger.mode={mode!r} (or WANDB_MODE) is not known; choose from: {', '.join(MODES)}")
    return mode


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class WandbTracker:
    """Thin wrapper so the loop can log without knowing about wandb."""

    def __init__(self, logger_cfg: Mapping[str, Any], run_dir: Path, run_id: str, sweep: str,
                 config: Mapping[str, Any], task_name: str, variant: str, ssm: bool, resume: bool):
        import wandb

        id_file = run_dir / "wandb_id"
        if resume and id_file.is_file():
            self.run_id = id_file.read_text().strip()
        else:
            attempt = len(list(run_dir.glob("wandb_id.*"))) + (1 if id_file.is_file() else 0)
            if id_file.is_file():  # keep the previous attempt's id for the record
                id_file.rename(run_dir / f"wandb_id.{attempt}")
            self.run_id = f"{run_id}-{attempt}"
            id_file.write_text(self.run_id)
        mode = resolve_mode(logger_cfg.get("mode"))
        self.run = wandb.init(
            project=logger_cfg["project"], entity=logger_cfg.get("entity"), group=sweep, job_type=task_name,
            name=f"{task_name}-{variant}-{'ssm' if ssm else 'nossm'}-{run_id[:8]}",
            tags=["ssm-on" if ssm else "ssm-off", task_name, variant], config=flatten(config),
            dir=str(run_dir), id=self.run_id, resume="allow", mode=mode, reinit="finish_previous",
            # wandb's metadata holds sys.argv verbatim: leave it out when the command line has a password.
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                    x_disable_meta=secrets.redact_tree(sys.argv) != sys.argv),
        )

    def log(self, values: Mapping[str, Any], step: int) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, summary: Mapping[str, Any], failed: bool) -> None:
        self.run.summary.update(flatten(summary))
        self.run.finish(exit_code=1 if failed else 0)


def start(logger_cfg: Mapping[str, Any], **kwargs: Any) -> Optional[WandbTracker]:
    """A tracker for `logger.kind`, or None for `none`."""
    kind = logger_cfg["kind"]
    if kind == "none":
        return None
    if kind != "wandb":
        raise ValueError(f"logger.kind={kind!r} is not known; choose from: wandb, none")
    return WandbTracker(logger_cfg, **kwargs)
