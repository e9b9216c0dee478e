"""Reader of an image-folder tree ``<root>/{train,test}/<class>/*`` (the layout ImageFolder reads),
and safe extraction of such a tree from a tarball."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from .errors import DataFormatError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def read_image_folder(root: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, H, W, C) uint8, labels (N,) and class names of ``root/<class>/*``.

    Labels follow the sorted class-folder names; all images must have the same size.
    """
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataFormatError(f"{root}: no class folders")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    array = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
            except OSError as exc:
                raise DataFormatError(f"{file}: not a readable image ({exc})") from exc
            if array.ndim == 2:
                array = array[:, :, None]
            images.append(array)
            labels.append(label)
    if not images:
        raise DataFormatError(f"{root}: no images")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataFormatError(f"{root}: images of different sizes {sorted(shapes)[:3]}; resize them first")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def safe_extract(archive: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Extract a tarball, refusing members that would land outside ``destination`` or are links/devices."""
    destination = Path(destination).resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (destination / member.name).resolve()
            if member.name.startswith("/") or (destination not in target.parents and target != destination):
                raise DataFormatError(f"{archive}: refusing member {member.name!r} outside the destination")
            if not (member.isfile() or member.isdir()):
                raise DataFormatError(f"{archive}: refusing member {member.name!r} (links and devices not allowed)")
        tar.extractall(destination, filter="data")
