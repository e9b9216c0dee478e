"""Result records as JSON lines, written atomically: a run killed halfway leaves earlier records intact.

:func:`append_record` adds one record (``earlyprune run --out``); :func:`merge_records` writes a set of
records into a file that may hold others (``earlyprune report``'s ``results.jsonl``): the records already
there are kept, one per run key, and a line that is not a JSON record (torn by an older version, edited
by hand) is moved to ``<file>.unreadable`` rather than dropped. Both take turns on a lock file beside the
JSON-lines file, so concurrent writers never lose each other's records.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

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


def merge_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]],
                  key: str = "key") -> tuple[list[dict[str, Any]], int, int]:
    """Write ``records`` into the JSON-lines file ``path`` without losing what it holds already.

    The file's records stay, in their order, one per run ``key`` (the first of each; records without a
    key all stay); a record of ``records`` replaces the one with its key in place, and the others follow.
    Lines that are not JSON records are appended to ``<path>.unreadable``. Written atomically, under the
    file's lock. Returns the merged records, how many came from the file only (not in ``records``), and
    how many unreadable lines were moved aside."""
    path = Path(path)
    records = list(records)
    new: dict[Any, dict[str, Any]] = {}
    for record in records:
        if record.get(key) is not None:
            new.setdefault(record[key], record)
    keyless_new = [r for r in records if r.get(key) is None]
    with _exclusive(path):
        kept: list[dict[str, Any]] = []
        unreadable: list[bytes] = []
        seen: set[Any] = set()
        if path.exists():
            for line in path.read_bytes().splitlines(keepends=True):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    unreadable.append(line if line.endswith(b"\n") else line + b"\n")
                    continue
                run = record.get(key)
                if run is None:
                    kept.append(record)
                elif run not in seen:
                    seen.add(run)
                    kept.append(new.get(run, record))
        from_file_only = sum(1 for r in kept if r.get(key) is None or r.get(key) not in new)
        merged = kept + [r for run, r in new.items() if run not in seen] + keyless_new
        if unreadable:
            aside = path.with_name(path.name + ".unreadable")
            old = aside.read_bytes() if aside.exists() else b""
            atomic_write(aside, lambda f: f.write(old + b"".join(unreadable)))
        text = b"".join(json.dumps(r, sort_keys=True, default=_jsonable).encode() + b"\n" for r in merged)
        atomic_write(path, lambda f: f.write(text))
    return merged, from_file_only, len(unreadable)


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


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as the JSON-lines file a run will append to, checked before the run starts: not a
    directory, in a folder that exists or can be made and is writable. Raises an ``OSError`` that says
    which and how to fix it."""
    import errno

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"--out {path} is a directory: give a file name for the records, "
                                f"e.g. --out {path / 'runs.jsonl'}", str(path))
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"--out {path}: {folder} is a file, not a folder", str(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"--out {path}: {folder} is not writable", str(path))
    return path


def keep_record(record: dict[str, Any], out: str | os.PathLike[str],
                store_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], list[str]]:
    """Write a finished run's ``record`` to the JSON-lines file ``out`` and, when given, the results
    store in ``store_dir``, without ever losing it: when neither can be written (a full disk, ``out``
    turned into a directory meanwhile), the record goes to a fallback file in the temporary folder (and,
    should that fail too, the caller prints it). Returns where it was written and what failed, each as
    messages naming the path and the error."""
    import tempfile

    written: list[str] = []
    failed: list[str] = []
    try:
        append_record(out, record)
        written.append(str(out))
    except OSError as error:
        failed.append(f"{out}: {error}")
    if store_dir is not None:
        import sqlite3

        from .store import STORE_NAME, ResultsStore

        try:
            with ResultsStore(store_dir) as store:
                store.add(record)
            written.append(str(Path(store_dir) / STORE_NAME))
        except (OSError, sqlite3.Error) as error:
            failed.append(f"{Path(store_dir) / STORE_NAME}: {error}")
    if not written:
        name = f"earlyprune-unsaved-{record.get('key', 'run')}-{os.getpid()}.jsonl"
        for folder in (Path(tempfile.gettempdir()), Path.home() / ".cache" / "earlyprune"):
            try:
                append_record(folder / name, record)
                written.append(str(folder / name))
                break
            except OSError as error:
                failed.append(f"{folder / name}: {error}")
    return written, failed
