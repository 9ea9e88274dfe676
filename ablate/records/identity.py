"""A cell's identity: which config keys name it (run_id), and its flat factors.

    run_id      sha256 of the resolved config minus NON_SEMANTIC_KEYS (paths and task.data_root,
                logger, sweep name, device, workers, progress, rerun): the same cell always gets the
                same id, on any machine. Keys the model does not use (its family's inert keys) are
                held at their defaults in the config (ablate/cell.py), so they do not make another cell.
    factors     the record's flat {key: scalar}: the standard axes, the model family's record keys,
                and every other key the job overrode.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

# Config keys that do not change what a cell computes; excluded from the run_id hash.
NON_SEMANTIC_KEYS = (
    "paths", "logger", "sweep", "rerun", "tuning",
    "trainer.device", "trainer.devices", "trainer.nodes", "trainer.dist_timeout_min", "trainer.num_workers", "trainer.progress", "trainer.log_every",
    "trainer.checkpoint_every", "task.eval_workers", "task.data_root",
)


def _drop(config: dict, dotted: str) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


def semantic_config(config: Mapping[str, Any]) -> dict:
    """The part of a resolved config that defines the cell (a deep copy)."""
    semantic = json.loads(json.dumps(config, default=str))
    for key in NON_SEMANTIC_KEYS:
        _drop(semantic, key)
    return semantic


def run_id(config: Mapping[str, Any]) -> str:
    """Content hash of the semantic config: stable across sweeps, machines and key order."""
    text = json.dumps(semantic_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def size_str(image_size: Iterable[int]) -> str:
    """"HxW"; any other length is joined the same way, so a malformed size still names its record."""
    return "x".join(str(side) for side in image_size)


def override_parts(item: str) -> tuple[str, str]:
    """(key, value) of one Hydra override as written: `+trainer.lr=1e-3` -> ("trainer.lr", "1e-3");
    the add/delete prefixes (+, ++, ~) are dropped, the value kept as text ("" for `~key`)."""
    key, _, value = item.lstrip("+~").partition("=")
    return key, value


def factors(config: Mapping[str, Any], overrides: Iterable[str], always: Iterable[str] = ()) -> dict[str, Any]:
    """Flat factor dict: the standard axes, the dotted keys `always` (the model family's record keys,
    e.g. model.ssm and model.scan), and every overridden key (values made scalar)."""
    out: dict[str, Any] = {
        "model.name": config["model"]["name"],
        "task": config["task"]["name"],
        "task.image_size": size_str(config["task"]["image_size"]),
        "seed": int(config["seed"]),
    }
    overrides = [f"{key}=" for key in always] + list(overrides)
    tuned = set((config.get("tuning") or {}).get("params") or ())  # chosen per arm by a tuning study
    for item in overrides:
        key, raw = override_parts(item)
        if key in out or key in tuned or key in ("model", "task", "experiment") or key.startswith("hydra") or _non_semantic(key):
            continue
        value = _lookup(config, key)
        if isinstance(value, Mapping):  # a config-group choice such as trainer=cpu: the option's name
            out[key] = raw
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


def _non_semantic(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS)


# Settings a model family gained after records of this schema were first written, with the behaviour
# every earlier record of that family had (the only one there was then). A record whose config lacks
# one is read as having that value (ablate.analysis.collect says how many were), never dropped.
ADDED_SETTINGS = {"mambaout": {"model.causal": False, "model.match_macs": False}}


def predated_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """{key: value} of the ADDED_SETTINGS this record's config predates (empty for a current record)."""
    model = (record.get("config") or {}).get("model") or {}
    family = (record.get("family") or {}).get("name")
    if family is None and "ssm" in model:  # written before records named their family: only MambaOut had ssm
        family = "mambaout"
    return {key: value for key, value in ADDED_SETTINGS.get(family, {}).items() if key.split(".", 1)[1] not in model}


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
