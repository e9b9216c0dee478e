"""Small helpers shared by the model families: width scaling and input-size checks."""

from __future__ import annotations

import math


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier: ``max(1, round(channels * width))``.

    Python's ``round`` rounds halves to even (``round(2.5) == 2``); never fewer than one channel, so
    very narrow CPU-sized variants still form a connected network.
    """
    return max(1, round(channels * width))


def check_width(width: float) -> float:
    """Reject widths that are not finite and positive (a zero width would give a disconnected net)."""
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    return float(width)


def image_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``: an int means a square image."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))
