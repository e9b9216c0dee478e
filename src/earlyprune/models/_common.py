"""Small helpers shared by the model families: width scaling, input-size checks, token inputs."""

from __future__ import annotations

import math

import torch


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


def token_ids(x: torch.Tensor) -> torch.Tensor:
    """Token ids as int64: integer tensors as they are; a floating tensor of whole numbers (the all-ones
    input that SynFlow and the FLOPs counter build from ``input_shape``) cast to int64; anything else refused."""
    if x.is_floating_point():
        ids = x.long()
        if not torch.equal(ids.to(x.dtype), x):
            raise TypeError("this model takes token ids (an integer tensor of shape (batch, seq_len)); got "
                            f"a {x.dtype} tensor that is not whole numbers")
        return ids
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"this model takes token ids (an integer tensor), got {x.dtype}")
    return x.long() if x.dtype != torch.int64 else x


def check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_vocab(vocab_size: int | None, num_classes: int | None, default: int) -> int:
    """A language model's vocabulary: ``vocab_size``, else ``num_classes`` (its output classes are the
    vocabulary), else ``default``; the two must agree when both are given."""
    if vocab_size is not None and num_classes is not None and vocab_size != num_classes:
        raise ValueError(f"a language model predicts its own vocabulary: num_classes ({num_classes}) must equal "
                         f"vocab_size ({vocab_size})")
    return check_positive("vocab_size", vocab_size if vocab_size is not None else
                          num_classes if num_classes is not None else default)
