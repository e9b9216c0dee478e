"""What a task is: :class:`Task` (its loss, its metric, how targets relate to outputs) and :class:`Meter`
(the metric summed over batches).

A task is also a loss function: ``task(outputs, targets)`` checks that the loss can apply to those outputs
and targets (a clear :class:`~earlyprune.errors.PruningError` otherwise, never a silent zero) and returns
the mean loss. Every criterion scores with it (``Scoring.loss_fn``), and the training loop trains with it.

The hook for tasks whose loss is not "apply a function to the model's prediction" (reinforcement
learning: a loss computed from a batch of transitions, with a target network, rewards, ...) is
:meth:`Task.batch_loss`: the scoring loss of one batch. :mod:`earlyprune.tasks.reinforcement` documents it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..batches import Batch, to_device
from ..calling import predict
from ..errors import PruningError
from ..model_state import model_device, model_dtype


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype the meters accumulate in on ``device``: float64, except on Apple's MPS, which has no
    float64 (float32 there: sums of an epoch's losses lose a few digits, no more)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


class Meter:
    """A task's metrics accumulated over batches: :meth:`update` per batch, :meth:`result` at the end.

    ``count`` is the number of units the loss is averaged over (examples, target values or tokens).
    """

    count: int = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def result(self) -> dict[str, float]:  # pragma: no cover - interface
        """``{"loss": mean loss, <metric>: value, ...}``; the task's main metric is ``task.metric``."""
        raise NotImplementedError


class Task:
    """One task: the loss criteria score with and training minimises, and the metric that is reported.

    Attributes:
        name: the task's name (``"classification"``, ``"regression"``, ``"language_modelling"``).
        metric: the name of the main metric in :meth:`Meter.result` (``"accuracy"``, ``"rmse"``,
            ``"perplexity"``).
        higher_is_better: whether a larger main metric is better.
        class_targets: targets are class indices, so class-balanced scoring sets (GraSP) can be drawn.
        supervised: the loss is ``loss(prediction, targets)``, so the training loop and evaluation of
            :mod:`earlyprune.train` apply; a task for which it is not (reinforcement learning) overrides
            :meth:`batch_loss` and brings its own loop.
    """

    name: str = "task"
    metric: str = "loss"
    higher_is_better: bool = False
    class_targets: bool = False
    supervised: bool = True

    # --- the loss ----------------------------------------------------------------------------------------
    def check(self, outputs: Any, targets: torch.Tensor) -> None:
        """Raise :class:`PruningError` when the loss cannot apply to ``outputs`` and ``targets``."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The mean loss (``outputs`` and ``targets`` already checked)."""
        raise NotImplementedError

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task as a loss function: :meth:`check`, then :meth:`loss`."""
        self.check(outputs, targets)
        return self.loss(outputs, targets)

    def batch_loss(
        self,
        model: nn.Module,
        batch: Batch,
        temperature: float = 1.0,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The scoring loss of ``model`` on one ``(inputs, targets)`` batch: the model called by the
        convention of :mod:`earlyprune.calling` (with ``params`` in place of its own, when given), the
        prediction checked, divided by ``temperature`` (GraSP's T) and given to :meth:`loss`.

        This is the hook for a task whose loss is computed otherwise (from a batch of transitions):
        override it; every criterion reaches the loss through it."""
        device, dtype = model_device(model), model_dtype(model)
        inputs = to_device(batch[0], device, dtype)
        targets = batch[1].to(device)
        outputs = predict(model, inputs, params)
        self.check(outputs, targets)
        if temperature != 1.0:
            outputs = outputs / temperature
        return self.loss(outputs, targets)

    # --- the metric --------------------------------------------------------------------------------------
    def meter(self) -> Meter:  # pragma: no cover - interface
        """A fresh :class:`Meter` for this task."""
        raise NotImplementedError

    def better(self, a: float | None, b: float | None) -> bool:
        """Whether metric value ``a`` is better than ``b`` (None is worse than anything)."""
        if a is None or a != a:  # None or NaN
            return False
        if b is None or b != b:
            return True
        return a > b if self.higher_is_better else a < b

    def best(self, values: list[float | None]) -> float | None:
        """The best of ``values`` by this task's direction (None when there is none)."""
        best = None
        for value in values:
            if self.better(value, best):
                best = value
        return best

    def __repr__(self) -> str:
        return f"<task {self.name}: {self.metric}, {'higher' if self.higher_is_better else 'lower'} is better>"


def shape(value: Any) -> str:
    """A tensor's shape as text, for messages."""
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def require_tensor(task: str, outputs: Any) -> None:
    if not isinstance(outputs, torch.Tensor):
        raise PruningError(f"task {task!r}: the model's prediction must be a tensor, got {type(outputs).__name__}")
