"""Result records as JSON lines, written atomically: a run killed halfway leaves earlier records intact."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..atomic import atomic_write


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record to ``path`` by writing the whole new file aside and renaming it over.

    A crash at any moment leaves either the old file or the new one, never a torn line.
    """
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    line = json.dumps(record, sort_keys=True, default=_jsonable).encode() + b"\n"
    atomic_write(path, lambda f: f.write(old + line))


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
