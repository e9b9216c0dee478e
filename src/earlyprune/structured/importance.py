"""Channel importance (higher = keep) for structured pruning: one value per channel of each group.

Each criterion declares its channel-importance function beside its unstructured one
(:mod:`earlyprune.criteria`): ``random`` and ``magnitude`` (the filter-norm baseline) in
``criteria/baselines.py``, structured SNIP (|∂L/∂c| for a gate c on each channel) in ``criteria/snip.py``,
EarlyCroP's structured CroP (|∂(gᵀ∇_w L)/∂c|) in ``criteria/crop.py``. This module scores a model's
groups with any of them, under the unstructured masks applied to the model.

Gradient scores are taken in training mode by default, like this library's unstructured criteria
(``train=False`` scores in eval mode, as the official code does). Scoring leaves the model exactly as it
was found: weights, BatchNorm statistics, each submodule's mode, ``.grad``, and the global RNG state.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..criteria import Criterion, compute_channel_importance, registered
from ..masking import applied_masks
from .groups import ChannelGroup, GroupPlan, as_groups


def structured_methods() -> tuple[str, ...]:
    """The registered criteria that have a structured form."""
    return tuple(name for name, c in registered().items() if c.structured)


def channel_importance(
    model: nn.Module,
    method: str | Criterion,
    batches: Iterable[tuple[Any, torch.Tensor]] | None,
    groups: GroupPlan | Sequence[ChannelGroup],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    *,
    train: bool | None = None,
    **options: Any,
) -> dict[int, torch.Tensor]:
    """``{group index: float64 importance per channel}`` for ``method`` (a criterion with a structured form).

    ``batches`` is any finite iterable of ``(inputs, targets)`` (or one such pair); ``random`` and
    ``magnitude`` need none. ``loss_fn(outputs, targets)`` defaults to mean cross-entropy. ``train``
    overrides the criterion's scoring mode.
    """
    masks = applied_masks(model)
    return compute_channel_importance(model, method, as_groups(groups), batches, masks=masks, loss_fn=loss_fn,
                                      seed=seed, train=train, **options)
