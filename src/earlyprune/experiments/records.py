"""Result records as JSON lines, written atomically: a run killed halfway leaves earlier records intact."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..atomic import atomic_write


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record to ``path`` by writing the whole new file aside and renaming it over.

    A crash at any moment leaves either the old file or the new one, never a torn line. Processes
    appending to the same file at once (parallel runs) take turns on a lock file beside it, so none
    overwrites another's record.
    """
    path = Path(path)
    line = json.dumps(record, sort_keys=True, default=_jsonable).encode() + b"\n"
    with _exclusive(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write(path, lambda f: f.write(old + line))


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` (POSIX; elsewhere no lock is taken)."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer at a time is the caller's business
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file; a malformed line raises an error naming its line number."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON record ({exc.msg})") from exc


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
