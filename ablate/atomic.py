"""The one atomic file writer: records, checkpoints, the launcher's job outcomes and report artefacts.

``write(path, content)`` writes a temp file in the same folder, fsyncs it and renames it over
``path`` (``os.replace`` is atomic on POSIX), so a writer killed at any point leaves the old file or
the new one, never a torn one; and a symlink planted at ``path`` is replaced, never followed.

A failed write (a full disk, a read-only folder) leaves the old file untouched and raises one
``OSError`` naming the errno and the path, found even where a library hid it: torch.save turns a
``No space left on device`` into ``enforce fail ... unexpected pos``, with the OSError only in the
exception's context.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

_TMP_SUFFIX = ".tmp"
# Read once, at import: os.umask can only be read by setting it, which would race other threads' files.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
Content = Union[bytes, str, Callable[[BinaryIO], object]]


def write(path: Path, content: Content) -> None:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to a binary handle) to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # what open() would have given; mkstemp makes it 0600
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(error)
        if cause is not None and isinstance(error, Exception):
            raise write_error(path, cause) from error
        raise
    _fsync_dir(path.parent)


def write_error(path: Path, error: OSError) -> OSError:
    """``[Errno 28] No space left on device (ENOSPC) writing <path>``: one line, errno kept."""
    code = error.errno
    name = errno.errorcode.get(code, "?") if code is not None else "?"
    return OSError(code, f"{os.strerror(code) if code is not None else error} ({name}) writing {path}")


def _tmp_prefix(path: Path) -> str:
    # The writer's pid in the name lets a later writer tell a dead writer's leftover from a live one's.
    return f".{Path(path).name}.{os.getpid()}."


def _remove_orphans(path: Path) -> None:
    """Delete temp files that a killed writer of ``path`` left behind (its pid is gone).

    A live writer's temp file is left alone: its pid is in the name and still running.
    """
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        pid_text = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            tmp.unlink(missing_ok=True)


def _os_error(error: BaseException) -> Optional[OSError]:
    """The OSError with an errno behind ``error``: itself, or one in its cause/context chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
