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
"""
from __future__ import annotations

import re
from typing import Any

MASK = "***"
# userinfo password: after "scheme://" and an optional user, up to the "@" of the host part.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*):(?P<pw>[^@/?#\s'\"]+)@")
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
