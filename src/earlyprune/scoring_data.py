"""Choosing the scoring batches a criterion sees when :func:`earlyprune.prune` is given a loader.

Batches given directly (one ``(inputs, targets)`` pair or a list of them) are used as they are. From a
loader (any other iterable of batches) ``prune`` takes the first ``num_batches`` batches, or, for
criteria whose paper scores on a class-balanced set (GraSP: 10 samples per class), draws exactly
``samples_per_class`` examples of each class by walking the loader (classification only: for a task
without classes it takes the first batches).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from .batches import Batch, as_batches, first_example, is_batch_list, to_device
from .calling import predict
from .criteria import Criterion
from .errors import PruningError
from .model_state import isolated, model_device, model_dtype
from .tasks import get as get_task


def scoring_batches(
    model: nn.Module, criterion: Criterion, data: Any, num_batches: int = 1, samples_per_class: int = 10,
    task: Any = None,
) -> list[Batch] | None:
    """The batches ``criterion`` scores ``model`` on, from ``data`` as given to ``earlyprune.prune``.

    None without data (an error if the criterion needs data); batches given directly as they are; from a
    loader the first ``num_batches``, or for a class-balanced criterion (GraSP) on a task whose targets
    are classes (``task``, default classification) ``samples_per_class`` examples of each class, split in
    two halves as GraSP's official code scores them. For other tasks (regression, language modelling)
    there are no classes to balance: a class-balanced criterion then takes the first ``num_batches``.
    """
    if data is None:
        if criterion.needs_data:
            raise PruningError(
                f"method {criterion.name!r} needs data: pass data=(inputs, targets), a list of batches or a loader"
            )
        return None
    if is_batch_list(data):
        return as_batches(data)
    if criterion.data == "class_balanced" and get_task(task).class_targets:
        first, data = _peek(data)
        return _halves(class_balanced(data, samples_per_class, _num_classes(model, first)))
    return first_batches(data, num_batches)


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


def _halves(batches: list[Batch]) -> list[Batch]:
    """Split the class-balanced set into two halves, as GraSP's official code scores it."""
    inputs, targets = batches[0]
    half = targets.shape[0] // 2
    if half == 0:
        return batches
    return [(inputs[:half], targets[:half]), (inputs[half:], targets[half:])]


def _num_classes(model: nn.Module, first_batch: Any) -> int:
    """Number of classes = width of the model's output on one example of the data's first batch."""
    with isolated(model, train=False), torch.no_grad():
        out = predict(model, to_device(first_example(first_batch[0]), model_device(model), model_dtype(model)))
    return int(out.shape[-1])


def _peek(loader: Any) -> tuple[Any, Any]:
    """The first batch of ``loader`` and an iterable of all its batches, that first one included, that
    walks ``loader`` only once (so one-pass iterators lose nothing)."""
    iterator = iter(loader)
    first = next(iterator, None)
    if first is None:
        raise PruningError("data is empty: the loader yielded no batches")
    return first, itertools.chain([first], iterator)
