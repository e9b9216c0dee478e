"""Atomic file writes: write aside, flush to disk, rename over. A process killed at any moment leaves
either the old file or the complete new one, never a torn file. A write that fails removes its temporary
file; one killed by SIGKILL may leave a hidden ``.NAME.*.tmp`` beside the file, which nothing reads.

Every file earlyprune writes goes through :func:`atomic_write` (records, exports, reports, plots, masks,
cached arrays). A write that fails for lack of room or an I/O error raises :class:`StorageError`, which
says what happened (``ENOSPC``: no space left on the device) and names the path; the old file is left as
it was.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

#: errno values that mean "the disk", not "the data": the write may succeed elsewhere or later.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


class StorageError(OSError):
    """A file could not be written because of the storage (disk full, quota, I/O error, read-only file
    system): the message names the errno and the path. An :class:`OSError` with the original ``errno``."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # "ENOSPC (No space left on device) writing PATH"


def storage_error(error: OSError, path: str | os.PathLike[str]) -> StorageError:
    """``error`` as a :class:`StorageError` whose message reads ``ENOSPC (No space left on device): PATH``."""
    code = error.errno or errno.EIO
    name = errno.errorcode.get(code, str(code))
    new = StorageError(code, f"{name} ({os.strerror(code)}) writing {os.fspath(path)}")
    new.filename = os.fspath(path)
    return new


def is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the storage (ENOSPC, EDQUOT, EIO, EROFS, EFBIG), not of the data."""
    return isinstance(error, StorageError) or (isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically.

    Raises :class:`StorageError` when the disk is full (or another storage failure), ``IsADirectoryError``
    when ``path`` is a directory; in every failure the old file is untouched and no temporary remains."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a directory: give a file name", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise storage_error(error, path) if is_storage_error(error) else error
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600: give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, StorageError) and is_storage_error(error):
            raise storage_error(error, path) from error
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Create or replace ``path`` with ``data``, atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Create or replace ``path`` with ``text``, atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode(encoding))


def _mode_for(path: Path) -> int:
    """The existing file's permissions, or those of a new file under the current umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
