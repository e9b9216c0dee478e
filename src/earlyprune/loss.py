"""The scoring loss: running a model on one batch and taking the loss every data-based criterion uses.

The loss comes from the task (:mod:`earlyprune.tasks`): a :class:`~earlyprune.tasks.Task` is itself a
loss function that checks it can apply, and :func:`batch_loss` hands a whole batch to it
(:meth:`~earlyprune.tasks.Task.batch_loss`, the hook a task whose loss is not ``loss(prediction,
targets)`` overrides). A plain function ``loss_fn(outputs, targets)`` given by the user is applied to the
prediction as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from .batches import Batch, to_device
from .calling import predict
from .errors import PruningError
from .model_state import model_device, model_dtype
from .tasks import CLASSIFICATION, Task
from .tasks.classification import check_class_range

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The default scoring loss: the classification task, mean cross-entropy (the loss of every paper here),
#: which refuses a model with one output per example instead of scoring a loss that is identically 0.
default_loss: LossFn = CLASSIFICATION


def batch_loss(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    temperature: float = 1.0,
    params: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Loss of ``model`` on one batch, outputs divided by ``temperature`` (GraSP's T) before the loss.

    The model is called by the library's convention (:mod:`earlyprune.calling`); with ``params`` it runs
    with those tensors in place of its parameters and buffers (``torch.func.functional_call``). A
    :class:`~earlyprune.tasks.Task` as ``loss_fn`` computes the batch's loss itself (its ``batch_loss``).
    """
    if isinstance(loss_fn, Task):
        loss = loss_fn.batch_loss(model, batch, temperature, params)
    else:
        device, dtype = model_device(model), model_dtype(model)
        inputs = to_device(batch[0], device, dtype)
        targets = batch[1].to(device)
        outputs = predict(model, inputs, params)
        check_class_targets(outputs, targets)
        if temperature != 1.0:
            outputs = outputs / temperature
        loss = loss_fn(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise PruningError(f"the loss must be a scalar tensor, got {type(loss).__name__}"
                           f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if not torch.isfinite(loss):
        raise PruningError(f"the loss on the scoring data is {loss.item()}; check the model and the data")
    return loss


def check_class_targets(outputs: Any, targets: torch.Tensor) -> None:
    """For a user's loss function: class-index targets laid out as cross-entropy takes them (``(N,)`` for
    ``(N, C)`` outputs, ``(N, d...)`` for ``(N, C, d...)``) must fit the outputs' classes (a clear error
    instead of an IndexError deep in the loss). Targets laid out otherwise are the loss's own business."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() < 2 or targets.is_floating_point():
        return
    if tuple(targets.shape) == (outputs.shape[0], *outputs.shape[2:]):
        check_class_range(outputs.shape[1], targets)
