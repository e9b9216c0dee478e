"""One round of a criterion's importance, the same way for every criterion: resolve the declaration,
check its options, put the model in the criterion's mode with pruned weights zeroed, call the declared
function, check what it returned, and leave the model exactly as it was found."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..batches import as_batches
from ..distributed import average_across_ranks
from ..errors import PruningError
from ..loss import LossFn, default_loss
from ..model_state import isolated
from .registry import registered, resolve
from .spec import Criterion, Scoring, call_with_options


def compute_importance(
    model: nn.Module,
    method: str | Criterion,
    params: Mapping[str, nn.Parameter],
    batches: Any = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    train: bool | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """``{name: importance}`` of ``method`` for ``params`` of ``model``, leaving the model untouched.

    Under ``masks`` the masked network is scored (pruned weights are zero in the forward pass too) and
    pruned weights score 0. ``train`` overrides the criterion's scoring mode (True train, False eval).
    """
    criterion = resolve(method)
    criterion.check_options(options)
    data = _data_for(criterion, batches)
    with isolated(model, train=criterion.train if train is None else train, seed=seed):
        if masks:
            _zero_pruned(params, masks)
        scoring = Scoring(model, params, data, loss_fn or default_loss, masks=masks or None, seed=seed)
        importance = dict(_call(criterion, criterion.importance, scoring, options))
    _check_returned(criterion, importance, {n: p.shape for n, p in params.items()})
    if masks:
        importance = {n: _masked(importance[n], masks.get(n)) for n in params}
    else:
        importance = {n: importance[n] for n in params}
    if criterion.needs_data:
        # Under torch.distributed each rank scored its own shard: average so every rank selects alike.
        importance = average_across_ranks(importance)
    return importance


def compute_channel_importance(
    model: nn.Module,
    method: str | Criterion,
    groups: Sequence[Any],
    batches: Any = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    train: bool | None = None,
    **options: Any,
) -> dict[int, torch.Tensor]:
    """``{group index: float64 importance per channel}`` of ``method`` for the channel ``groups``.

    ``train`` overrides the criterion's scoring mode (True train, False eval).
    """
    criterion = resolve(method)
    require_structured(criterion)
    criterion.check_options(options)
    if criterion.needs_data and batches is None:
        raise PruningError(f"structured {criterion.name} needs data: pass batches of (inputs, targets) or a loader")
    data = _data_for(criterion, batches)
    mode = criterion.train if train is None else train
    with isolated(model, train=mode, seed=seed):
        scoring = Scoring(model, {}, data, loss_fn or default_loss, masks=masks or None, seed=seed,
                          groups=list(groups))
        scores = dict(_call(criterion, criterion.channel_importance, scoring, options))
    for g in groups:
        score = scores.get(g.index)
        if not isinstance(score, torch.Tensor) or tuple(score.shape) != (g.size,):
            raise PruningError(
                f"criterion {criterion.name!r} returned no importance of shape ({g.size},) for channel group "
                f"{g.index} ({g.producers[0]}); a channel-importance function returns one value per channel"
            )
    scores = {g.index: scores[g.index].detach().to(torch.float64).cpu() for g in groups}
    return average_across_ranks(scores) if criterion.needs_data else scores


def require_structured(criterion: Criterion) -> None:
    """A clear error, listing the structured methods, for a criterion without a channel-importance form."""
    if not criterion.structured:
        structured = [name for name, c in registered().items() if c.structured]
        raise PruningError(
            f"method {criterion.name!r} has no structured form; structured methods: {', '.join(structured)}"
        )


def _call(criterion: Criterion, fn: Any, scoring: Scoring, options: Mapping[str, Any]) -> Any:
    """The criterion's function on ``scoring``; an operation of the model that autograd cannot
    differentiate as the criterion needs (no second derivative for GraSP, ProsPr, CroP) is a clear error."""
    try:
        return call_with_options(fn, scoring, options)
    except RuntimeError as exc:
        match = re.search(r"derivative for (\S+) is not implemented", str(exc))
        if match is None:
            raise
        raise PruningError(
            f"criterion {criterion.name!r} differentiates the model's gradient (a second derivative), but "
            f"PyTorch has no derivative for {match.group(1)}, which the model uses (e.g. a Hardsigmoid "
            "activation); use a first-order criterion (snip, synflow, magnitude, random) or twice-"
            "differentiable activations"
        ) from exc


def _data_for(criterion: Criterion, batches: Any) -> list | None:
    if batches is None:
        if criterion.needs_data:
            raise PruningError(
                f"method {criterion.name!r} needs data: pass data=(inputs, targets), a list of batches or a loader"
            )
        return None
    return as_batches(batches)


def _check_returned(criterion: Criterion, importance: Mapping[str, Any], shapes: Mapping[str, torch.Size]) -> None:
    """What a criterion returned must cover every scored parameter with a finite tensor of its shape."""
    for name, shape in shapes.items():
        score = importance.get(name)
        if not isinstance(score, torch.Tensor):
            raise PruningError(f"criterion {criterion.name!r} returned no importance tensor for {name!r}")
        if score.shape != shape:
            raise PruningError(f"criterion {criterion.name!r} returned importance of shape {tuple(score.shape)} "
                               f"for {name!r}, whose shape is {tuple(shape)}")


def _zero_pruned(params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in params.items():
            if name in masks:
                param.mul_(masks[name].to(device=param.device, dtype=param.dtype))


def _masked(score: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return score
    return torch.where(mask.to(device=score.device, dtype=torch.bool), score, torch.zeros_like(score))
