"""ProsPr: prospect pruning (Alizadeh, Tailor, Zintgraf, van Amersfoort, Farquhar, Lane, Gal,
"Prospect Pruning: Finding Trainable Weights at Initialization using Meta-Gradients", ICLR 2022).

A multiplicative mask m = 1 is put on the prunable weights, θ_0 = θ ⊙ m, and M steps of plain SGD
θ_{k+1} = θ_k − η ∇L(θ_k) are unrolled *with the graph kept*; the importance of a weight is
|∂L(θ_M)/∂m| at m = 1, the meta-gradient of the loss after a few steps of training. With M = 0 this is
SNIP's |θ ⊙ ∂L/∂θ|.

Defaults follow the official code (mil-ad/prospr): M = 3 inner steps, inner learning rate 0.1, no
momentum or weight decay, every trainable parameter takes part in the inner steps, one batch for the
inner steps and the meta-loss unless ``fresh_batches`` is set (then batch k serves step k and the next
one the meta-loss, cycling through the given batches). Under the current masks the inner updates of
pruned weights are masked too, so they stay zero. The model itself is never modified: the unrolled
weights are passed with ``torch.func.functional_call``. Training-mode BatchNorm layers take their second
derivative from :mod:`._batchnorm_second_order` (the same values to float rounding, fewer passes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..batches import Batch
from ..errors import PruningError
from ..loss import LossFn, batch_loss
from ._batchnorm_second_order import fused_batchnorm_second_order
from .official import Official
from .spec import Criterion, Scoring

DEFAULT_STEPS = 3
DEFAULT_INNER_LR = 0.1


def prospr_importance(
    scoring: Scoring,
    *,
    steps: int = DEFAULT_STEPS,
    inner_lr: float = DEFAULT_INNER_LR,
    fresh_batches: bool = False,
    first_order: bool = False,
) -> dict[str, torch.Tensor]:
    """|∂L(θ_M)/∂m| at m = 1 after ``steps`` differentiable SGD steps; higher = keep.

    ``first_order`` is the official code's ``method="first_order"``: the inner steps' gradients are
    taken as constants (no graph through them), so θ_M depends on m only through θ_0 = θ ⊙ m and the
    score is |θ ⊙ ∇L(θ_M)|: four plain forward and backward passes instead of differentiating through
    the steps, and no graph kept (the paper's meta-gradient is the default)."""
    model, params, batches, loss_fn, masks = (scoring.model, scoring.params, scoring.batches, scoring.loss_fn,
                                              scoring.masks)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise PruningError(f"steps must be an integer >= 0 (number of inner SGD steps), got {steps!r}")
    if not inner_lr > 0:
        raise PruningError(f"inner_lr must be > 0, got {inner_lr!r}")
    if not isinstance(first_order, bool):
        raise PruningError(f"first_order must be True or False, got {first_order!r}")
    # the meta-gradient differentiates each step's gradient again; the first-order one does not
    with contextlib.nullcontext() if first_order else fused_batchnorm_second_order(model):
        return _meta_gradient(model, params, batches, loss_fn, masks, steps, inner_lr, fresh_batches, first_order)


def _meta_gradient(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    masks: Mapping[str, torch.Tensor] | None,
    steps: int,
    inner_lr: float,
    fresh_batches: bool,
    first_order: bool = False,
) -> dict[str, torch.Tensor]:
    """:func:`prospr_importance`'s value, its arguments checked."""
    scored_ids = {id(p): n for n, p in params.items()}
    gates = {n: torch.ones_like(p, requires_grad=True) for n, p in params.items()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    weights: dict[str, torch.Tensor] = {}
    keep: dict[str, torch.Tensor | None] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scored = scored_ids.get(id(p))
        if scored is not None:
            mask = None if masks is None else masks.get(scored)
            base = p.detach() if mask is None else p.detach() * mask
            weights[name] = base * gates[scored]
            keep[name] = mask
        else:
            weights[name] = p.detach().clone().requires_grad_(True)
            keep[name] = None
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def with_weights(current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**current, **frozen, **buffers}

    def batch_for(k: int) -> Batch:
        return batches[k % len(batches)] if fresh_batches else batches[0]

    for k in range(steps):
        loss = batch_loss(model, batch_for(k), loss_fn, params=with_weights(weights))
        names = list(weights)
        grads = torch.autograd.grad(loss, [weights[n] for n in names], create_graph=not first_order,
                                    allow_unused=True)
        updated = {}
        for n, g in zip(names, grads):
            if g is None:
                updated[n] = weights[n]
                continue
            if keep[n] is not None:
                g = g * keep[n]
            updated[n] = weights[n] - inner_lr * g
        weights = updated

    meta_loss = batch_loss(model, batch_for(steps), loss_fn, params=with_weights(weights))
    names = list(gates)
    meta_grads = torch.autograd.grad(meta_loss, [gates[n] for n in names], allow_unused=True)
    return {
        n: torch.zeros_like(gates[n]) if g is None else g.detach().abs() for n, g in zip(names, meta_grads)
    }


PROSPR = Criterion(
    "prospr", paper="Alizadeh et al., ProsPr, ICLR 2022",
    summary="abs(∂L(θ_M)/∂m), meta-gradient through M SGD steps", importance=prospr_importance,
    official=Official("mil-ad/prospr, prospr/utils.py (keep_mask_from_scores)", settings={"rule": "prospr"},
                      notes=("keeps ceil((1-s)*N) weights (rule='prospr'), not round((1-s)*N)",)),
)
