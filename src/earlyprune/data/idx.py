"""Reader of the IDX format of MNIST and Fashion-MNIST (gzipped or not), checked against its header.

An IDX file is: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, one
big-endian uint32 size per dimension, then the data. A file whose payload is not exactly the size its
header announces is rejected, so a truncated download never becomes a silently shorter dataset.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .errors import DataFormatError

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
          0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike[str], expected_dims: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into an array of the shape its header gives."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataFormatError(f"{path}: cannot decompress ({exc}); the file is corrupt or truncated") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if expected_dims is not None and ndim != expected_dims:
        raise DataFormatError(f"{path}: expected {expected_dims} dimensions, the header says {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    payload = len(raw) - header
    if payload != expected:
        raise DataFormatError(
            f"{path}: header announces {shape} ({expected} bytes of data) but the file holds {payload}; "
            "the file is truncated or corrupt — download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in ``.gz``); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(blob) if str(path).endswith(".gz") else blob)
