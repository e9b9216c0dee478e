"""Gradient and Hessian-gradient products of the scoring loss, shared by SNIP, GraSP and CroP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..batches import Batch
from ..loss import LossFn, batch_loss


def loss_gradient(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    temperature: float = 1.0,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """g = sum over the batches of dL_b/dθ for the given parameters (no graph kept).

    With ``masks`` the gradient is taken for the masked network: entries of pruned weights are zero,
    since those weights cannot move.
    """
    names = list(params)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        loss = batch_loss(model, batch, loss_fn, temperature)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                total[n] += g
    if masks is not None:
        for n in names:
            if n in masks:
                total[n] = total[n] * masks[n]
    return total


def hessian_gradient_product(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch],
    vector: Mapping[str, torch.Tensor],
    loss_fn: LossFn,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """H v = sum over the batches of d/dθ (∇L_b(θ) · v), by double backpropagation.

    This is GraSP's construction (Wang et al., 2020): with v = g the gradient from :func:`loss_gradient`,
    z = g·∇L is differentiated once more, giving the Hessian-gradient product without forming H.
    The Hessian is taken over the given ``params`` only (the weights being scored), as in the official
    code.
    """
    names = list(params)
    plist = [params[n] for n in names]
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        loss = batch_loss(model, batch, loss_fn, temperature)
        grads = torch.autograd.grad(loss, plist, create_graph=True, allow_unused=True)
        z = sum((g * vector[n]).sum() for n, g in zip(names, grads) if g is not None)
        if not isinstance(z, torch.Tensor) or not z.requires_grad:
            continue  # the loss is linear in these weights: H v = 0
        hv = torch.autograd.grad(z, plist, allow_unused=True)
        for n, h in zip(names, hv):
            if h is not None:
                total[n] += h.detach()
    return total


def accumulate_gate_grads(totals: dict[int, torch.Tensor], groups: Sequence, grads: Sequence) -> None:
    """Add each group's gate gradient (float64, on the CPU) to ``totals``; groups without one are skipped."""
    for g, grad in zip(groups, grads):
        if grad is not None:
            totals[g.index] += grad.detach().double().cpu()
