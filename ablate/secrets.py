"""Secrets in text ablate writes: the one redaction function, used by everything that writes.

    redact("postgresql://me:pw@db/optuna")          -> "postgresql://me:***@db/optuna"
    redact("postgresql://:pw@db/optuna")            -> "postgresql://:***@db/optuna"
    redact("mysql://db/x?user=me&password=pw")      -> "mysql://db/x?user=me&password=***"
    redact_tree({"a": ["x://u:pw@h"]})              -> {"a": ["x://u:***@h"]}

Covered: the password of a URL's userinfo (`scheme://user:pw@`, `scheme://:pw@`) and query or
key=value parameters named password, passwd, pass, pwd, token, secret, api_key (any case). Text
anywhere in a string is redacted, so a log line or a traceback that quotes a URL is safe too.
The way to keep a secret out of a command line in the first place is a reference (env:NAME,
file:PATH; see ablate.tune.storage).

Hydra writes its own copies of a job's command line (<job>/.hydra/*.yaml, <sweep>/multirun.yaml)
before the job runs; `RedactHydraFiles`, a Hydra callback wired in conf/config.yaml, rewrites them
redacted when the job starts.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ablate import atomic

MASK = "***"
# userinfo password: after "scheme://" and an optional user, up to the last "@" before a blank or
# quote (greedy, so an unescaped "@", ":" or "/" in the password is masked too: `https://user:se/cret@host`).
# A URL with an "@" in its path after host:port is masked as well: too much rather than too little.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*):(?P<pw>[^?#\s'\"]+)@")
# ?password=... / &token=... (also ;pwd=... in ODBC-style strings); value up to the next separator.
_PARAM = re.compile(
    r"(?P<head>(?:^|[?&;\s])(?:password|passwd|pass|pwd|token|secret|api_key)=)(?P<value>[^&;\s'\"#]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every password and token replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _PARAM.sub(lambda m: m["head"] + MASK, text)


def redact_tree(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(item) for item in value)
    return value


def redact_file(path: Path) -> None:
    """Rewrite a text file redacted, atomically (readers never see a torn file); no-op if clean."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    clean = redact(text)
    if clean == text:
        return
    atomic.write(path, clean)


class RedactHydraFiles(Callback):
    """on_job_start: redact the job's .hydra/*.yaml and, in a multirun, the sweep's multirun.yaml.

    Hydra saves them just before this hook runs, so a raw secret lies there only for that moment.
    """

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        paths = []
        if hydra.output_subdir is not None:
            paths += sorted((Path(hydra.runtime.output_dir) / hydra.output_subdir).glob("*.yaml"))
        if hydra.mode == RunMode.MULTIRUN:
            paths.append(Path(hydra.sweep.dir) / "multirun.yaml")
        for path in paths:
            redact_file(path)
