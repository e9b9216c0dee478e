"""The scoring loss: running a model on one batch and taking the loss every data-based criterion uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .batches import Batch, to_device
from .calling import predict
from .errors import PruningError
from .model_state import model_device, model_dtype

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, the loss of every paper here."""
    return F.cross_entropy(outputs, targets)


def batch_loss(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    temperature: float = 1.0,
    params: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Loss of ``model`` on one batch, outputs divided by ``temperature`` (GraSP's T) before the loss.

    The model is called by the library's convention (:mod:`earlyprune.calling`); with ``params`` it runs
    with those tensors in place of its parameters and buffers (``torch.func.functional_call``)."""
    device, dtype = model_device(model), model_dtype(model)
    inputs = to_device(batch[0], device, dtype)
    targets = batch[1].to(device)
    outputs = predict(model, inputs, params)
    check_class_targets(outputs, targets)
    if temperature != 1.0:
        outputs = outputs / temperature
    loss = loss_fn(outputs, targets)
    if not torch.isfinite(loss):
        raise PruningError(f"the loss on the scoring data is {loss.item()}; check the model and the data")
    return loss


def check_class_targets(outputs: Any, targets: torch.Tensor) -> None:
    """Class-index targets must fit the model's outputs (a clear error instead of an IndexError deep in
    the loss)."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() < 2 or targets.is_floating_point():
        return
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= outputs.shape[1]):
        raise PruningError(
            f"scoring targets range over [{int(targets.min())}, {int(targets.max())}] but the model gives "
            f"{outputs.shape[1]} outputs per example; check the labels and the model's number of classes"
        )
