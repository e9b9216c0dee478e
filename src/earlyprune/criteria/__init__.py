"""Importance criteria, one module per method. Every criterion returns, for every prunable parameter,
a tensor of the parameter's shape where higher means more important (keep).

``CRITERIA`` is the registry used by :func:`earlyprune.score` and :func:`earlyprune.prune`; each entry
says which paper the method comes from, whether it needs data, and its options with their defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..distributed import average_across_ranks
from ..errors import PruningError
from ._context import Batch, LossFn, as_batches, default_loss, isolated
from .baselines import magnitude_importance, random_importance
from .crop import crop_importance
from .grasp import DEFAULT_TEMPERATURE, grasp_importance
from .prospr import DEFAULT_INNER_LR, DEFAULT_STEPS, prospr_importance
from .snip import snip_importance
from .synflow import synflow_importance


@dataclass(frozen=True)
class Criterion:
    """A registered importance criterion."""

    name: str
    paper: str
    summary: str
    needs_data: bool
    #: Mode the model is put in while scoring: True train, False eval, None as it is.
    train_mode: bool | None
    #: Options with the papers' defaults (keyword arguments of the criterion).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Rounds of pruning by default (SynFlow: 100, exponential schedule).
    default_iterations: int = 1
    #: Whether ``earlyprune.prune`` draws a class-balanced scoring set from a loader (GraSP: 10 per class).
    class_balanced: bool = False


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in [
        Criterion("random", "baseline", "i.i.d. uniform importance, seeded", False, None),
        Criterion("magnitude", "baseline", "abs(θ)", False, None),
        Criterion(
            "snip",
            "Lee, Ajanthan, Torr, SNIP, ICLR 2019",
            "abs(θ ⊙ ∂L/∂θ), connection sensitivity",
            True,
            True,
        ),
        Criterion(
            "grasp",
            "Wang, Zhang, Grosse, GraSP, ICLR 2020",
            "θ ⊙ Hg with g on logits/T (signed), gradient-signal preservation",
            True,
            True,
            {"temperature": DEFAULT_TEMPERATURE},
            class_balanced=True,
        ),
        Criterion(
            "synflow",
            "Tanaka, Kunin, Yamins, Ganguli, SynFlow, NeurIPS 2020",
            "abs(θ ⊙ ∂R/∂θ) of the abs-linearised net on an all-ones input, data-free, 100 rounds",
            False,
            False,
            {"double": False, "input_shape": None},
            default_iterations=100,
        ),
        Criterion(
            "prospr",
            "Alizadeh et al., ProsPr, ICLR 2022",
            "abs(∂L(θ_M)/∂m), meta-gradient through M SGD steps",
            True,
            True,
            {"steps": DEFAULT_STEPS, "inner_lr": DEFAULT_INNER_LR, "fresh_batches": False},
        ),
        Criterion(
            "crop",
            "Rachwan et al., EarlyCroP, ICML 2022",
            "abs(θ ⊙ Hg) under the current mask, gradient-flow preservation",
            True,
            True,
        ),
    ]
}


def compute_importance(
    model: nn.Module,
    method: str,
    params: Mapping[str, nn.Parameter],
    batches: Any = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """One round of ``method``'s importance for ``params`` of ``model``, leaving the model untouched."""
    criterion = get_criterion(method)
    method = criterion.name
    loss_fn = loss_fn or default_loss
    _check_options(criterion, options)
    data = as_batches(batches) if (criterion.needs_data or batches is not None) else None
    importance = _dispatch(model, method, params, data, masks, loss_fn, seed, criterion, options)
    if criterion.needs_data:
        # Under torch.distributed each rank scored its own shard: average so every rank selects alike.
        importance = average_across_ranks(importance)
    return importance


def _dispatch(model, method, params, data, masks, loss_fn, seed, criterion, options):
    with isolated(model, train=criterion.train_mode, seed=seed):
        if masks:
            # Score the network the masks define: pruned weights are zero in the forward pass too (the
            # caller's weights are restored on leaving `isolated`), and pruned weights get importance 0.
            _zero_pruned(params, masks)
            importance = _importance(model, method, params, data, masks, loss_fn, seed, options)
            return {n: _masked(score, masks.get(n)) for n, score in importance.items()}
        return _importance(model, method, params, data, masks, loss_fn, seed, options)


def _zero_pruned(params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in params.items():
            if name in masks:
                param.mul_(masks[name].to(device=param.device, dtype=param.dtype))


def _masked(score: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return score
    return torch.where(mask.to(device=score.device, dtype=torch.bool), score, torch.zeros_like(score))


def _importance(model, method, params, data, masks, loss_fn, seed, options):
    if method == "random":
        return random_importance(params, seed=seed)
    if method == "magnitude":
        return magnitude_importance(params)
    if method == "snip":
        return snip_importance(model, params, data, loss_fn, masks=masks)
    if method == "grasp":
        return grasp_importance(
            model, params, data, loss_fn, masks=masks,
            temperature=options.get("temperature", DEFAULT_TEMPERATURE),
        )
    if method == "synflow":
        return synflow_importance(
            model, params, data, input_shape=options.get("input_shape"), double=options.get("double", False)
        )
    if method == "prospr":
        return prospr_importance(
            model, params, data, loss_fn, masks=masks,
            steps=options.get("steps", DEFAULT_STEPS),
            inner_lr=options.get("inner_lr", DEFAULT_INNER_LR),
            fresh_batches=options.get("fresh_batches", False),
        )
    if method == "crop":
        return crop_importance(model, params, data, loss_fn, masks=masks)
    raise AssertionError(f"criterion {method!r} is registered but not dispatched")


def get_criterion(method: str) -> Criterion:
    """The registered criterion called ``method``, or a clear error listing the known ones."""
    if not isinstance(method, str) or method.lower() not in CRITERIA:
        raise PruningError(f"unknown method {method!r}; known criteria: {', '.join(CRITERIA)}")
    return CRITERIA[method.lower()]


def _check_options(criterion: Criterion, options: Mapping[str, Any]) -> None:
    unknown = [k for k in options if k not in criterion.defaults]
    if unknown:
        known = ", ".join(criterion.defaults) or "none"
        raise PruningError(f"unknown option(s) {unknown} for method {criterion.name!r}; its options: {known}")


__all__ = ["CRITERIA", "Criterion", "compute_importance", "get_criterion", "Batch", "LossFn", "as_batches"]
