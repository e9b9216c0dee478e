"""Reading earlyprune's own files (masks, shrunk models) without running code from them.

Every such file is read with ``torch.load(..., weights_only=True)``: tensors and plain data load, anything
else (a pickled class or function, which plain ``torch.load`` would execute) is refused, as is a corrupt or
truncated file, with one :class:`~earlyprune.errors.PruningError` naming the file.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from .errors import PruningError


def load_plain(source: str | os.PathLike[str] | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """The plain contents of ``source`` (a path, or a mapping already in memory, returned as is).

    ``what`` names the contents for the error message ("masks", "a shrunk model"). A missing file raises
    :class:`FileNotFoundError` unchanged; a corrupt, truncated or unsafe one raises :class:`PruningError`.
    """
    if isinstance(source, Mapping):
        return source
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # corrupt, truncated or unsafe (pickled code) file
        raise PruningError(f"cannot read {what} from {os.fspath(source)!r}: {exc}") from exc
