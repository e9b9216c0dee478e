"""A cache of decoded arrays as ``.npy`` files, so the second load of a dataset takes about a second.

The cache key includes the size and modification time of every source file, so replacing a source
invalidates it. Files are written aside and renamed into place: a killed process never leaves a torn
cache file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_write


def default_cache_dir() -> Path:
    """``$EARLYPRUNE_CACHE``, else ``~/.cache/earlyprune``."""
    return Path(os.environ.get("EARLYPRUNE_CACHE") or Path.home() / ".cache" / "earlyprune")


def source_key(sources: Sequence[Path]) -> str:
    """A short hash of the sources' paths, sizes and modification times."""
    h = hashlib.sha256()
    for path in sorted(sources):
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_arrays(
    cache_dir: Path, name: str, sources: Sequence[Path], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns, from the cache when the sources are unchanged."""
    folder = Path(cache_dir) / f"{name}-{source_key(sources)}"
    marker = folder / "complete"
    if marker.exists():
        return {p.stem: np.load(p, allow_pickle=False) for p in folder.glob("*.npy")}
    arrays = build()
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        _atomic_save(folder / f"{key}.npy", array)
    atomic_write(marker, lambda f: f.write(b"ok\n"))
    return arrays


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
