"""Classification: mean cross-entropy of logits ``(N, C)`` against class indices ``(N,)``; accuracy,
higher is better. The loss of every paper this library implements, and the default task.

Also accepted, as :func:`torch.nn.functional.cross_entropy` takes them: dense outputs ``(N, C, d1, ...)``
against indices ``(N, d1, ...)`` (accuracy per element), and soft targets (probabilities of the outputs'
shape; accuracy against their argmax). Refused, with what to use instead: one output per example
(cross-entropy over one class is identically 0, so every gradient and every data-based score would be 0:
use ``task="regression"``), floating-point targets of another shape than the outputs (regression
values), next-token outputs ``(batch, seq, vocab)`` (``task="language_modelling"``), and class indices
out of range.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import PruningError
from .base import Meter, Task, require_tensor, shape, sum_dtype


class Classification(Task):
    name = "classification"
    metric = "accuracy"
    higher_is_better = True
    class_targets = True

    def check(self, outputs: Any, targets: torch.Tensor) -> None:
        require_tensor(self.name, outputs)
        if outputs.dim() < 2 or outputs.shape[1] == 1:
            raise PruningError(
                f"task 'classification': the model gives one output per example (outputs of shape "
                f"{shape(outputs)}); cross-entropy over one class is identically 0, so every gradient and every "
                "data-based score would be 0. For a model predicting a number pass task='regression'; for a "
                "binary classifier give it two outputs or pass loss_fn= (e.g. binary cross-entropy)"
            )
        if targets.is_floating_point():
            if targets.shape == outputs.shape:
                return  # soft targets: class probabilities
            raise PruningError(
                f"task 'classification': the targets are floating-point values of shape {shape(targets)}, not "
                f"class indices, and not class probabilities of the outputs' shape {shape(outputs)}; for "
                "targets that are numbers to predict pass task='regression'"
            )
        expected = (outputs.shape[0], *outputs.shape[2:])
        if tuple(targets.shape) != tuple(expected):
            hint = ""
            if outputs.dim() == 3 and tuple(targets.shape) == tuple(outputs.shape[:2]):
                hint = (": these look like next-token outputs (batch, seq, vocab) against targets (batch, seq); "
                        "pass task='language_modelling'")
            raise PruningError(
                f"task 'classification': class-index targets of shape {shape(targets)} do not fit outputs of "
                f"shape {shape(outputs)} (expected targets of shape {tuple(expected)}){hint}"
            )
        check_class_range(outputs.shape[1], targets)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def meter(self) -> Meter:
        return AccuracyMeter()


def check_class_range(classes: int, targets: torch.Tensor) -> None:
    """Class-index targets must lie in [0, classes) (a clear error instead of an IndexError in the loss)."""
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= classes):
        raise PruningError(
            f"targets range over [{int(targets.min())}, {int(targets.max())}] but the model gives {classes} "
            "outputs per example; check the labels and the model's number of classes"
        )


class AccuracyMeter(Meter):
    """Summed cross-entropy and correct predictions, over every target element."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.correct = 0
        self.count = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        # sums stay tensors on the outputs' device (read once, in result(): no host synchronisation per batch)
        self.loss_sum = self.loss_sum + F.cross_entropy(outputs, targets, reduction="sum").to(sum_dtype(outputs.device))
        labels = targets.argmax(1) if targets.is_floating_point() else targets
        self.correct = self.correct + (outputs.argmax(1) == labels).sum()
        self.count += labels.numel()

    def result(self) -> dict[str, float]:
        if not self.count:
            raise PruningError("no examples were measured")
        return {"loss": float(self.loss_sum) / self.count, "accuracy": int(self.correct) / self.count}


CLASSIFICATION = Classification()
