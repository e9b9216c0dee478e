"""Structured pruning in one call: trace, score channels, select, remove them physically."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..criteria import as_batches
from ..criteria._context import model_device, model_dtype, to_device
from ..errors import PruningError
from ..scoring_data import first_batches, is_batch_list
from .groups import build_groups
from .importance import channel_importance
from .selection import select_channels
from .surgery import ShrinkResult, shrink


def prune_structured(
    model: nn.Module,
    method: str,
    sparsity: float,
    data: Any = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    num_batches: int = 1,
    exclude: Iterable[Any] = (),
    min_fraction: float = 0.0,
    channel_multiple: int = 1,
    example_inputs: Any = None,
    **options: Any,
) -> nn.Module:
    """Remove a fraction ``sparsity`` of all prunable channels of ``model`` (in place) and return it.

    ``channel_multiple`` rounds every layer's kept width up to a multiple of it (faster kernels).
    The result of the surgery is stored on the model as ``model.earlyprune_shrink`` (a
    :class:`ShrinkResult`): kept indices, parameter counts and layer widths before and after.
    """
    for key in ("scope", "schedule", "iterations", "rule", "on_collapse", "min_per_layer", "samples_per_class"):
        options.pop(key, None)  # unstructured-only settings
    if options:
        raise PruningError(f"unknown option(s) for structured pruning: {sorted(options)}")
    batches = None
    if data is not None:
        batches = as_batches(data) if is_batch_list(data) else first_batches(data, num_batches)
    if example_inputs is None:
        if batches is not None:
            example_inputs = _one(batches[0][0])
        elif getattr(model, "input_shape", None) is not None:
            example_inputs = torch.ones((1, *model.input_shape))
        else:
            raise PruningError("structured pruning needs example inputs to trace the model: pass data or example_inputs")
    example_inputs = to_device(example_inputs, model_device(model), model_dtype(model))
    modules = dict(model.named_modules())
    ignored = [m for e in exclude for m in ([modules[e]] if isinstance(e, str) and e in modules else
                                           [x for x in model.modules() if isinstance(e, type) and isinstance(x, e)])]
    plan = build_groups(model, example_inputs, ignored_layers=ignored)
    importance = channel_importance(model, method, batches, plan.groups, loss_fn=loss_fn, seed=seed)
    keep = select_channels(importance, plan.groups, sparsity, min_fraction=min_fraction, multiple=channel_multiple)
    result: ShrinkResult = shrink(model, plan, keep, optimizer=optimizer)
    model.earlyprune_shrink = result
    return model


def _one(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[:1]
    if isinstance(inputs, dict):
        return {k: _one(v) for k, v in inputs.items()}
    return inputs
