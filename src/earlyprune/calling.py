"""How a model is called on a batch's inputs, and which part of what it returns is the prediction.

One convention for scoring, tracing, training, evaluation and FLOPs counting:

* a tensor is the one positional argument: ``model(x)``;
* a mapping (a dict, a Hugging Face ``BatchEncoding``) is passed as keyword arguments,
  ``model(**inputs)``, when the model's ``forward`` takes those names (or ``**kwargs``); a ``forward``
  that takes one argument gets the mapping itself;
* a tuple or list is spread over the positional arguments, ``model(*inputs)``, when ``forward`` takes
  that many (``forward(x, z)``); a ``forward`` that takes one argument gets the sequence itself.

The prediction is the output itself when it is a tensor, its ``.logits`` (Hugging Face model outputs) or
``["logits"]``, or the first element of a tuple or list.

A model called some other way declares it with an ``earlyprune_inputs`` attribute: a function from the
batch's inputs to ``(args, kwargs)``, e.g. ``model.earlyprune_inputs = lambda b: ((b["x"],), {"z": b["z"]})``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .errors import PruningError


def split_inputs(model: nn.Module, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` that ``model`` is called with on ``inputs`` (see the module docstring)."""
    model = _inner(model)
    custom = getattr(model, "earlyprune_inputs", None)
    if custom is not None:
        args, kwargs = custom(inputs)
        return tuple(args), dict(kwargs)
    if isinstance(inputs, Mapping):
        if _binds(model, (), inputs):
            return (), dict(inputs)
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)) and len(inputs) != 1 and _binds(model, tuple(inputs), {}):
        return tuple(inputs), {}
    return (inputs,), {}


def call_model(model: nn.Module, inputs: Any, params: Mapping[str, torch.Tensor] | None = None) -> Any:
    """``model`` called on ``inputs`` by the convention; with ``params`` (``{name: tensor}``) the model is
    called with those tensors in place of its own parameters and buffers (``torch.func.functional_call``)."""
    args, kwargs = split_inputs(model, inputs)
    if params is not None:
        return functional_call(model, dict(params), args, kwargs)
    return model(*args, **kwargs)


def prediction(output: Any) -> torch.Tensor:
    """The prediction tensor in a model's output (the tensor, ``.logits``, ``["logits"]``, or the first
    element of a tuple or list); a clear error when there is none."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise PruningError(
        f"cannot find the prediction in the model's output ({type(output).__name__}): return a tensor, a tuple "
        "whose first element is the prediction, or an object or dict with 'logits'"
    )


def predict(model: nn.Module, inputs: Any, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The prediction of ``model`` on ``inputs``: :func:`call_model`, then :func:`prediction`."""
    return prediction(call_model(model, inputs, params))


def _inner(model: nn.Module) -> nn.Module:
    """The module a DataParallel/DDP wrapper holds (whose ``forward`` says how it is called)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _binds(model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return True  # a forward whose signature cannot be read: follow the convention
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True
