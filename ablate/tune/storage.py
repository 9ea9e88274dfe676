"""Storage URLs: where the studies live, so that a search can resume and many workers can share it.

    null (default)          sqlite:///<sweep dir>/optuna.db     one machine (or one worker)
    journal:///shared/x.log  optuna JournalStorage on a JournalFileBackend: shared filesystems (NFS)
    journal://x.log          the same, relative to the working directory
    sqlite:///x.db           SQLite, relative to the working directory (sqlite:////abs for absolute)
    postgresql://..., mysql+pymysql://...   any SQLAlchemy database URL: many workers

Relative paths are made absolute before the URL is passed to jobs, which may run elsewhere.
"""
from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from ablate.tune.errors import TuneConfigError

JOURNAL = "journal://"
SQLITE = "sqlite:///"
DEFAULT_DB = "optuna.db"
# Jobs report intermediate values while the sweeper reads: wait for a lock instead of failing.
SQLITE_LOCK_TIMEOUT_S = 60
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def resolve_storage_url(url: str | None, sweep_dir: Path) -> str:
    """The absolute storage URL for a sweep (`None` -> SQLite file in the sweep dir)."""
    if url is None:
        return SQLITE + str((Path(sweep_dir) / DEFAULT_DB).resolve())
    if not _URL.match(url):
        raise TuneConfigError(
            f"hydra.sweeper.storage={url!r}: expected sqlite:///PATH, journal:///PATH or an "
            "SQLAlchemy database URL (postgresql://..., mysql://...)"
        )
    if url.startswith(JOURNAL):
        return JOURNAL + str(Path(url[len(JOURNAL):]).resolve())
    if url.startswith(SQLITE) and url != SQLITE + ":memory:":
        return SQLITE + str(Path(url[len(SQLITE):]).resolve())
    return url


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for a resolved URL (see `resolve_storage_url`)."""
    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(SQLITE):
        Path(url[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}})
    return RDBStorage(url)


def load_study(url: str, name: str) -> optuna.Study:
    """An existing study, with a clear error naming the study and storage when it is missing."""
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise TuneConfigError(f"no study named {name!r} in {redact(url)}") from exc


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and reports."""
    return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", url)
