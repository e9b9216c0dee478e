"""Structured pruning in one call: trace, score channels, select, remove them physically."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..criteria import as_batches
from ..criteria._context import first_example, model_device, model_dtype, to_device
from ..errors import PruningError
from ..scoring_data import first_batches, is_batch_list
from ..selection import check_sparsity, schedule_targets
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
    schedule: Any = None,
    **options: Any,
) -> nn.Module:
    """Remove a fraction ``sparsity`` of all prunable channels of ``model`` (in place) and return it.

    ``schedule`` prunes in rounds, re-tracing and rescoring the shrunk model each round: ``"crop-it"``
    (EarlyCroP's k_i = s − (s − 0.5)·0.5^i, then s) or an increasing list of fractions ending at
    ``sparsity``; each fraction counts against the channels the model had before the first round.
    ``None`` (or ``"exponential"`` with one round) prunes in one shot.
    ``channel_multiple`` rounds every layer's kept width up to a multiple of it (faster kernels).
    The result of the surgery is stored on the model as ``model.earlyprune_shrink`` (a
    :class:`ShrinkResult`, composed over the rounds): kept indices, parameter counts and layer widths
    before and after.
    """
    for key in ("scope", "iterations", "rule", "on_collapse", "min_per_layer", "samples_per_class"):
        options.pop(key, None)  # unstructured-only settings
    if options:
        raise PruningError(f"unknown option(s) for structured pruning: {sorted(options)}")
    sparsity = check_sparsity(sparsity)
    targets = schedule_targets(sparsity, schedule)  # one round unless a schedule is given
    batches = None
    if data is not None:
        batches = as_batches(data) if is_batch_list(data) else first_batches(data, num_batches)
    if example_inputs is None:
        if batches is not None:
            example_inputs = first_example(batches[0][0])
        elif getattr(model, "input_shape", None) is not None:
            example_inputs = torch.ones((1, *model.input_shape))
        else:
            raise PruningError("structured pruning needs example inputs to trace the model: pass data or example_inputs")
    example_inputs = to_device(example_inputs, model_device(model), model_dtype(model))
    modules = dict(model.named_modules())
    ignored = [m for e in exclude for m in ([modules[e]] if isinstance(e, str) and e in modules else
                                           [x for x in model.modules() if isinstance(e, type) and isinstance(x, e)])]
    combined: ShrinkResult | None = None
    original_total = None
    for round_index, target in enumerate(targets):
        plan = build_groups(model, example_inputs, ignored_layers=ignored)
        current_total = sum(g.size for g in plan.groups)
        if original_total is None:
            original_total = current_total
        kept_target = round((1.0 - target) * original_total)
        if round_index and kept_target >= current_total:
            continue  # this round asks for nothing the earlier ones have not removed already
        relative = 1.0 - kept_target / current_total if current_total else 0.0
        importance = channel_importance(model, method, batches, plan.groups, loss_fn=loss_fn, seed=seed + round_index)
        keep = select_channels(importance, plan.groups, min(max(relative, 0.0), 1.0 - 1e-12),
                               min_fraction=min_fraction, multiple=channel_multiple)
        result: ShrinkResult = shrink(model, plan, keep, optimizer=optimizer)
        combined = result if combined is None else combined.then(result)
    model.earlyprune_shrink = combined
    return model
