"""Reader of the CIFAR-10/100 python batches (``cifar-10-batches-py``, ``cifar-100-python``).

Those files are pickles, and unpickling runs code named in the file. They are read with an unpickler
that resolves only the few numpy names the real files contain; anything else (``os.system``,
``builtins.eval``, ...) is refused before it can run.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataFormatError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1'): a pure function.
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only dicts, lists, bytes and arrays, and "
            "loading this would execute code"
        )


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler` (keys stay ``bytes``, as in the real files)."""
    try:
        return RestrictedUnpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataFormatError(f"{path}: {exc}") from exc
    except (EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise DataFormatError(f"{path}: not a readable CIFAR batch ({exc}); corrupt or truncated") from exc


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one batch file.

    Each row of ``data`` is 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
    CIFAR-10 names the labels ``labels``, CIFAR-100 ``fine_labels``.
    """
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a dict, found {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = next((batch[k] for k in (b"labels", b"fine_labels", "labels", "fine_labels") if k in batch), None)
    if data is None or labels is None:
        raise DataFormatError(f"{path}: missing 'data' or 'labels' entries")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DataFormatError(f"{path}: data must be uint8 (N, 3072) with N labels, got {data.dtype} {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)
