"""Checks made before any training starts, so that bad input fails at once with one clear message instead
of after the epochs are spent (or with a raw torch error that does not say what to change).

* :func:`check_targets`: a split's targets fit its task (class labels in ``[0, num_classes)``, next-token
  ids in ``[0, vocab_size)``, finite regression values). The dataset readers call it when data is read.
* :func:`check_trainable`: the model has parameters that are not on the ``meta`` device (which holds no
  data) and at least one that requires a gradient (an all-frozen model cannot train).
* :func:`check_model_fits`: one forward pass on one training example: the model accepts the dataset's
  inputs (else the error says the input shape it was given), and its outputs fit the task and the
  labels (a model with 10 outputs for labels up to 41 is refused here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import PruningError


def check_targets(split: Any) -> None:
    """Raise :class:`~earlyprune.data.DataFormatError` when the targets of ``split`` (a
    :class:`~earlyprune.data.split.DatasetSplit`) do not fit its task; the message names the dataset, the
    offending value and how many targets are out of range."""
    from .data.errors import DataFormatError

    targets = getattr(split, "targets", None)
    if not isinstance(targets, torch.Tensor) or targets.numel() == 0:
        return  # a split-like object of the caller's own, without a targets tensor: its loader is checked
    task = getattr(split, "task", "classification")
    if task in ("classification", "language_modelling"):
        if targets.is_floating_point():
            return  # soft targets (class probabilities): checked against the outputs' shape by the task
        bound = split.num_classes if task == "classification" else (split.vocab_size or split.num_classes)
        what = "class labels" if task == "classification" else "token ids"
        bad = (targets < 0) | (targets >= bound)
        if bool(bad.any()):
            first = int(targets[bad].flatten()[0])
            raise DataFormatError(
                f"dataset {split.name!r}: {int(bad.sum())} of its {what} lie outside [0, {bound}) (e.g. {first}): "
                f"a {task} split with {bound} {'classes' if task == 'classification' else 'tokens'} needs "
                f"{what} from 0 to {bound - 1}; check the label file, or the number of classes"
            )
    elif task == "regression" and targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        raise DataFormatError(f"dataset {split.name!r}: {int((~torch.isfinite(targets)).sum())} regression "
                              "targets are NaN or infinite")


def check_trainable(model: nn.Module) -> None:
    """Refuse a model that cannot train: one on the ``meta`` device, or one whose parameters are all
    frozen (``requires_grad=False``), each with what to do instead."""
    params = list(model.parameters())
    if any(p.is_meta for p in params) or any(b.is_meta for b in model.buffers()):
        raise PruningError(
            "the model's parameters are on the 'meta' device, which holds shapes but no data: nothing can be "
            "computed. Create it on a real device, or materialise it (model.to_empty(device='cpu') and "
            "initialise or load its weights) before pruning or training")
    if params and not any(p.requires_grad for p in params):
        raise PruningError(
            "every parameter of the model is frozen (requires_grad=False): nothing would train and no gradient "
            "could be computed. Unfreeze the layers to train (p.requires_grad_(True)) before pruning or training")


def check_model_fits(model: nn.Module, split: Any, task: Any) -> None:
    """One forward pass of ``model`` on the first example of ``split``, without a gradient and with every
    submodule's mode left as it was: the model must accept the inputs, and its prediction must fit
    ``task`` and the split's targets (class labels within its outputs)."""
    from .batches import to_device
    from .calling import predict
    from .model_state import model_device, model_dtype, preserved_modes
    from .tasks.classification import check_class_range

    check_trainable(model)
    batch = next(iter(split.loader(1)), None)
    if batch is None:
        raise PruningError(f"the training data {getattr(split, 'name', '')!r} is empty")
    inputs, targets = batch[0], batch[1]
    device, dtype = model_device(model), model_dtype(model)
    with torch.no_grad(), preserved_modes(model, train=False):
        try:
            outputs = predict(model, to_device(inputs, device, dtype))
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            if isinstance(error, PruningError):
                raise
            raise PruningError(
                f"the model cannot take this dataset's inputs: one example ({_describe(inputs)}) gave: "
                f"{type(error).__name__}: {error}. "
                "Is the model meant for this dataset (its input size, channels, or token ids)?") from error
    task.check(outputs, targets.to(outputs.device) if isinstance(outputs, torch.Tensor) else targets)
    every = getattr(split, "targets", None)
    if (task.name == "classification" and isinstance(outputs, torch.Tensor) and isinstance(every, torch.Tensor)
            and not every.is_floating_point()):
        try:
            check_class_range(outputs.shape[1], every)
        except PruningError as error:
            raise PruningError(f"dataset {getattr(split, 'name', '')!r}: {error}") from error


def _describe(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return f"of shape {tuple(inputs.shape[1:])}, {inputs.dtype}, as a batch of shape {tuple(inputs.shape)}"
    return f"a {type(inputs).__name__}"
