"""Storage URLs: where the studies live, so that a search can resume and many workers can share it.

    null (default)          sqlite:///<sweep dir>/optuna.db     one machine (or one worker)
    journal:///shared/x.log  optuna JournalStorage on a JournalFileBackend: shared filesystems (NFS)
    journal://x.log          the same, relative to the working directory
    sqlite:///x.db           SQLite, relative to the working directory (sqlite:////abs for absolute)
    postgresql://..., mysql+pymysql://...   any SQLAlchemy database URL: many workers
    env:NAME                the URL is the value of environment variable NAME
    file:PATH               the URL is the content of file PATH (e.g. mode 600, on a shared disk)

Relative paths are made absolute before the URL is passed to jobs, which may run elsewhere. A
reference (env:, file:) is what jobs get: the URL behind it, and any password in it, is read only
by the processes that open the storage (`open_storage`), so no record, log or Hydra file of a job
holds it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from ablate.secrets import redact
from ablate.tune.errors import TuneConfigError

JOURNAL = "journal://"
SQLITE = "sqlite:///"
ENV = "env:"
FILE = "file:"
DEFAULT_DB = "optuna.db"
# Jobs report intermediate values while the sweeper reads: wait for a lock instead of failing.
SQLITE_LOCK_TIMEOUT_S = 60
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def resolve_storage_url(url: str | None, sweep_dir: Path) -> str:
    """The absolute storage URL (or reference) for a sweep (`None` -> SQLite file in the sweep dir).

    A reference stays a reference (a relative file: path is made absolute); the URL it names is
    checked here, in the sweeper, so that a bad one stops the sweep before any job starts.
    """
    if url is None:
        return SQLITE + str((Path(sweep_dir) / DEFAULT_DB).resolve())
    if url.startswith(FILE):
        url = FILE + str(Path(url[len(FILE):]).resolve())
    if url.startswith((ENV, FILE)):
        _check_url(dereference(url, key="hydra.sweeper.storage"), url)
        return url
    _check_url(url, url)
    if url.startswith(JOURNAL):
        return JOURNAL + str(Path(url[len(JOURNAL):]).resolve())
    if url.startswith(SQLITE) and url != SQLITE + ":memory:":
        return SQLITE + str(Path(url[len(SQLITE):]).resolve())
    return url


def dereference(url: str, key: str = "tuning.storage") -> str:
    """The URL behind an env:NAME or file:PATH reference; any other URL unchanged.

    `key` is the setting named in errors: the sweeper's, or the job's override.
    """
    if url.startswith(ENV):
        name = url[len(ENV):]
        value = os.environ.get(name, "").strip()
        if not value:
            raise TuneConfigError(
                f"{key}={url}: environment variable {name or '(no name)'} is not set; "
                f"export {name or 'NAME'}=<database URL> where the sweep and its jobs run"
            )
        return value
    if url.startswith(FILE):
        path = Path(url[len(FILE):])
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise TuneConfigError(
                f"{key}={url}: cannot read {path} ({exc.strerror}); expected a file "
                "holding the database URL"
            ) from None
        if not value:
            raise TuneConfigError(f"{key}={url}: {path} is empty; expected a database URL")
        return value
    return url


def _check_url(url: str, given: str) -> None:
    """A URL optuna can open: journal, sqlite, or an SQLAlchemy dialect that exists."""
    shown = f"hydra.sweeper.storage={redact(given)!r}"
    allowed = ("expected sqlite:///PATH, journal:///PATH, an SQLAlchemy database URL "
               "(postgresql://..., mysql+pymysql://...), env:NAME or file:PATH")
    if not _URL.match(url):
        raise TuneConfigError(f"{shown}: {allowed}")
    if url.startswith((JOURNAL, SQLITE)):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError):
        scheme = url.split("://", 1)[0]
        raise TuneConfigError(f"{shown}: unknown database scheme {scheme!r}; {allowed}") from None


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for a resolved URL or reference (see `resolve_storage_url`)."""
    from sqlalchemy.exc import SQLAlchemyError

    url = dereference(url)
    try:
        return _open(url)
    except ImportError as exc:  # optuna's message names no driver; SQLAlchemy's cause does
        cause = exc.__cause__ or exc
        raise TuneConfigError(
            f"tuning storage {redact(url)}: the database driver is not installed "
            f"({redact(str(cause))}); install the module it names"
        ) from None
    except (OSError, SQLAlchemyError) as exc:  # unwritable path, unreachable server, bad login
        reason = redact(" ".join(str(exc).split("(Background on this error")[0].split()))
        raise TuneConfigError(
            f"tuning storage {redact(url)}: cannot open it ({type(exc).__name__}: {reason})"
        ) from None


def _open(url: str) -> BaseStorage:
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
