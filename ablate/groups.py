"""The config groups and their options (conf/ and the Hydra plugins), without importing torch:
`ablate --help` lists them in well under a second, and `run.py --help` starts with the same lines."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PLUGIN_GROUPS = ("hydra/launcher", "hydra/sweeper")  # options registered by Hydra plugins (ConfigStore)


def group_lines() -> list[str]:
    """One line per group: `group: option, option, ...` (schema entries and hypotheses left out)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # registers the plugins' options (hydra/launcher=local, hydra/sweeper=grid, ...)
    store = ConfigStore.instance()
    folders = {p.parent.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.glob("*/**/*.yaml")} - {"hypothesis"}
    lines = []
    for group in sorted(folders | set(PLUGIN_GROUPS)):
        options = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
        options |= {name[:-5] for name in (store.list(group) if group in PLUGIN_GROUPS else []) if name.endswith(".yaml")}
        lines.append(f"{group}: {', '.join(sorted(o for o in options if not o.endswith('schema')))}")
        if group == "hydra/launcher":
            lines.append("  on a cluster use slurm: submitit_slurm and submitit_local, the stock launchers it builds on, "
                         "stop collecting at the first job that left no result and check no setting before submitting")
    return lines
