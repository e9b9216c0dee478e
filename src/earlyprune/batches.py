"""Batches of any structure: one convention for scoring, tracing, training and FLOPs counting.

A batch is an ``(inputs, targets)`` pair. ``inputs`` may be a tensor, a tuple or list of tensors, or a
mapping of keyword tensors (Hugging Face style); nested structures are walked by :func:`tree_map`, so
moving a batch to a device, taking its first example or building an all-ones input are one walk each.
:func:`as_batches` is the one place that turns "one batch or many" into a list of batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Callable

import torch

from .errors import PruningError

Batch = tuple[Any, torch.Tensor]


def tree_map(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor inside it (in mappings, lists and tuples, nested);
    anything that is not a tensor or a container is kept as it is. Mappings become plain dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: tree_map(fn, v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple takes its fields one by one
        return type(value)(*(tree_map(fn, v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(tree_map(fn, v) for v in value)
    return value


def tree_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside ``value``, in order (depth first)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tree_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tree_tensors(item)


def to_device(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move every tensor in ``value`` to ``device``; floating ones also to ``dtype`` when given.

    A tensor in pinned (page-locked) memory, as a ``DataLoader(pin_memory=True)`` yields, is copied
    asynchronously (``non_blocking``): the copy overlaps the host's work instead of stalling it, and the
    device's stream orders it before the kernels that read it.
    """
    device = torch.device(device)

    def move(tensor: torch.Tensor) -> torch.Tensor:
        non_blocking = device.type == "cuda" and tensor.device.type == "cpu" and tensor.is_pinned()
        if dtype is not None and tensor.is_floating_point():
            return tensor.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return tensor.to(device, non_blocking=non_blocking)

    return tree_map(move, value)


def first_example(inputs: Any) -> Any:
    """The first example of a batch of inputs, kept as a batch of one (every tensor sliced ``[:1]``)."""
    return tree_map(lambda t: t[:1], inputs)


def leading_dim(inputs: Any) -> int:
    """The batch size: leading dimension of the first tensor in ``inputs`` with one (0 if none)."""
    for tensor in tree_tensors(inputs):
        if tensor.dim():
            return tensor.shape[0]
    return 0


def is_batch(data: Any) -> bool:
    """True for one ``(inputs, targets)`` pair: a pair whose second item is a tensor. (In a list of batches
    the second item is itself a batch; inputs may be a tuple, e.g. the two arguments of a model.)"""
    return _is_pair(data) and isinstance(data[1], torch.Tensor)


def is_batch_list(data: Any) -> bool:
    """True for one ``(inputs, targets)`` pair or a list/tuple of such pairs (used as given)."""
    if is_batch(data):
        return True
    return isinstance(data, (list, tuple)) and all(_is_pair(b) for b in data)


def as_batches(data: Any) -> list[Batch]:
    """Materialise ``data`` (one ``(inputs, targets)`` pair or an iterable of them) as a list of batches.

    Raises a clear error for missing or empty data and for items that are not ``(inputs, targets)`` pairs.
    """
    if data is None:
        raise PruningError("data is required by this method: pass batches of (inputs, targets) or a loader")
    batches = [tuple(data)] if is_batch(data) else list(data)
    if not batches:
        raise PruningError("data is empty: give at least one batch of (inputs, targets)")
    for i, batch in enumerate(batches):
        if not _is_pair(batch) or not isinstance(batch[1], torch.Tensor):
            raise PruningError(
                f"data batch {i} is not an (inputs, targets) pair of tensors (got {type(batch).__name__})"
            )
        if batch[1].numel() == 0:
            raise PruningError(f"data batch {i} is empty")
    return [(b[0], b[1]) for b in batches]


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2
