"""Choosing the scoring batches a criterion sees when :func:`earlyprune.prune` is given a loader.

Batches given directly (one ``(inputs, targets)`` pair or a list of them) are used as they are. From a
loader (any other iterable of batches) ``prune`` takes the first ``num_batches`` batches, or, for
criteria whose paper scores on a class-balanced set (GraSP: 10 samples per class), draws exactly
``samples_per_class`` examples of each class by walking the loader.
"""

from __future__ import annotations

from typing import Any

import torch

from .criteria import Batch, as_batches
from .errors import PruningError


def is_batch_list(data: Any) -> bool:
    """True for one ``(inputs, targets)`` pair or a list/tuple of such pairs (used as given)."""
    if isinstance(data, (list, tuple)):
        if len(data) == 2 and isinstance(data[1], torch.Tensor) and not isinstance(data[0], (list, tuple)):
            return True
        return all(isinstance(b, (list, tuple)) and len(b) == 2 for b in data)
    return False


def first_batches(loader: Any, num_batches: int) -> list[Batch]:
    """The first ``num_batches`` batches of ``loader``."""
    if num_batches < 1:
        raise PruningError(f"num_batches must be >= 1, got {num_batches}")
    taken = []
    for batch in loader:
        taken.append(batch)
        if len(taken) == num_batches:
            break
    return as_batches(taken)


def class_balanced(loader: Any, samples_per_class: int, num_classes: int) -> list[Batch]:
    """One batch holding exactly ``samples_per_class`` examples of each of ``num_classes`` classes.

    Walks ``loader`` once at most, taking examples in the order it yields them (seed the loader for
    reproducibility). Raises if a class has too few examples.
    """
    if samples_per_class < 1:
        raise PruningError(f"samples_per_class must be >= 1, got {samples_per_class}")
    inputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    counts = torch.zeros(num_classes, dtype=torch.long)
    for batch in as_batches(loader) if is_batch_list(loader) else loader:
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor):
            raise PruningError("class-balanced sampling needs tensor inputs; pass the scoring batches directly")
        for i in range(y.shape[0]):
            label = int(y[i])
            if not 0 <= label < num_classes:
                raise PruningError(f"label {label} outside [0, {num_classes}) in the scoring data")
            if counts[label] < samples_per_class:
                counts[label] += 1
                inputs.append(x[i])
                targets.append(y[i])
        if bool((counts >= samples_per_class).all()):
            break
    short = [c for c in range(num_classes) if counts[c] < samples_per_class]
    if not inputs:
        raise PruningError("data is empty: the loader yielded no examples")
    if short:
        raise PruningError(
            f"class-balanced scoring needs {samples_per_class} examples per class, but classes {short[:10]} have "
            f"fewer in the data; lower samples_per_class or pass the scoring batches directly"
        )
    order = torch.argsort(torch.stack(targets), stable=True)
    return [(torch.stack(inputs)[order], torch.stack(targets)[order])]
