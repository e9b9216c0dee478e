"""What every criterion shares: running the model on a batch, and leaving the model as it was found.

Scoring must not change anything the caller can see: weights, buffers (BatchNorm running statistics),
the train/eval mode of every submodule, accumulated gradients, or the global random-number state
(dropout during scoring would otherwise shift the caller's RNG stream).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PruningError

Batch = tuple[Any, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, the loss of every paper here."""
    return F.cross_entropy(outputs, targets)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in _tensors(model):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter; float32 otherwise."""
    for tensor in _tensors(model):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def to_device(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move a tensor, or tensors nested in dicts/lists/tuples, to ``device``; floating ones to ``dtype``."""
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value


def first_example(inputs: Any) -> Any:
    """The first example of a batch of inputs, kept as a batch of one: tensors (also inside dicts, lists
    and tuples) are sliced ``[:1]``, anything else is passed as it is."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:1]
    if isinstance(inputs, Mapping):
        return {k: first_example(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(first_example(v) for v in inputs)
    return inputs


def as_batches(data: Any) -> list[Batch]:
    """Materialise ``data`` (one ``(inputs, targets)`` pair or an iterable of them) as a list of batches.

    Raises a clear error for empty data or items that are not ``(inputs, targets)`` pairs.
    """
    if data is None:
        raise PruningError("data is required by this method: pass batches of (inputs, targets) or a loader")
    if _is_pair(data) and isinstance(data[1], torch.Tensor) and not _is_pair(data[0]):
        batches = [tuple(data)]
    else:
        batches = list(data)
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


def batch_loss(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    temperature: float = 1.0,
    forward: Callable[[Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Loss of ``model`` on one batch, outputs divided by ``temperature`` (GraSP's T) before the loss."""
    device, dtype = model_device(model), model_dtype(model)
    inputs = to_device(batch[0], device, dtype)
    targets = batch[1].to(device)
    outputs = (forward or model)(inputs)
    _check_class_targets(outputs, targets)
    if temperature != 1.0:
        outputs = outputs / temperature
    loss = loss_fn(outputs, targets)
    if not torch.isfinite(loss):
        raise PruningError(f"the loss on the scoring data is {loss.item()}; check the model and the data")
    return loss


def _check_class_targets(outputs: Any, targets: torch.Tensor) -> None:
    """Class-index targets must fit the model's outputs (a clear error instead of an IndexError deep in
    the loss)."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() < 2 or targets.is_floating_point():
        return
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= outputs.shape[1]):
        raise PruningError(
            f"scoring targets range over [{int(targets.min())}, {int(targets.max())}] but the model gives "
            f"{outputs.shape[1]} outputs per example; check the labels and the model's number of classes"
        )


@contextlib.contextmanager
def isolated(model: nn.Module, train: bool | None = None, seed: int | None = None) -> Iterator[None]:
    """Run the body on ``model`` and restore everything the caller could see afterwards.

    Restores parameter values, buffers, ``.grad`` of every parameter, each submodule's ``training``
    flag and the global RNG state. ``train`` sets the mode used inside (None keeps the current one);
    ``seed``, if given, seeds the RNG inside so scoring is reproducible.
    """
    params = dict(model.named_parameters())
    saved_params = {n: p.detach().clone() for n, p in params.items()}
    saved_grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in params.items()}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    devices = [d.index for d in {t.device for t in _tensors(model)} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            if train is not None:
                model.train(train)
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved_params[n])
                    p.grad = saved_grads[n]
                buffers = dict(model.named_buffers())
                for n, b in saved_buffers.items():
                    if n in buffers:
                        buffers[n].copy_(b)
            for m, mode in modes.items():
                m.training = mode
