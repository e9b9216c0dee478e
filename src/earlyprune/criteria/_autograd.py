"""Gradient and Hessian-gradient products of the scoring loss, shared by SNIP, GraSP and CroP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..batches import Batch
from ..loss import LossFn, batch_loss
from ._batchnorm_second_order import fused_batchnorm_second_order


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
        _add_hessian_product(total, names, plist, grads, vector)
    return total


def gradient_and_hessian_gradient(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    temperature: float = 1.0,
    masks: Mapping[str, torch.Tensor] | None = None,
    reuse_graph: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(g, H g)``: :func:`loss_gradient` and :func:`hessian_gradient_product` with ``vector = g``.

    With ``reuse_graph`` (the default) the last batch's gradient is taken once, with its graph kept
    (``create_graph=True``), and that same graph is differentiated again for the batch's share of Hg,
    instead of running the batch's forward and backward a second time as the two functions above do.
    For one scoring batch that saves a forward and a backward pass (about a quarter of GraSP's cost);
    the other batches are recomputed one at a time, so at most one batch's double-backward graph is
    alive, as in the plain route. Training-mode BatchNorm layers take their second derivative from
    :mod:`._batchnorm_second_order` (a few fused passes instead of PyTorch's chain of elementwise
    operations). The values are the same to float rounding (the sum over the batches is taken in another
    order); ``reuse_graph=False`` is the plain two-pass route (the official code's), on PyTorch's own
    BatchNorm derivative.
    """
    if not reuse_graph or not batches:
        grads = loss_gradient(model, params, batches, loss_fn, temperature, masks=masks)
        return grads, hessian_gradient_product(model, params, batches, grads, loss_fn, temperature)
    with fused_batchnorm_second_order(model):
        return _reusing_the_last_graph(model, params, batches, loss_fn, temperature, masks)


def _reusing_the_last_graph(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    temperature: float,
    masks: Mapping[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`gradient_and_hessian_gradient` with ``reuse_graph``."""
    names = list(params)
    plist = [params[n] for n in names]
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    earlier, last = batches[:-1], batches[-1]
    for batch in earlier:
        loss = batch_loss(model, batch, loss_fn, temperature)
        for n, g in zip(names, torch.autograd.grad(loss, plist, allow_unused=True)):
            if g is not None:
                total[n] += g
    loss = batch_loss(model, last, loss_fn, temperature)
    kept = torch.autograd.grad(loss, plist, create_graph=True, allow_unused=True)
    for n, g in zip(names, kept):
        if g is not None:
            total[n] += g.detach()
    if masks is not None:
        for n in names:
            if n in masks:
                total[n] = total[n] * masks[n]
    hg = {n: torch.zeros_like(p) for n, p in params.items()}
    _add_hessian_product(hg, names, plist, kept, total)  # the last batch, on the graph already built
    del kept, loss
    for batch in earlier:
        loss = batch_loss(model, batch, loss_fn, temperature)
        grads = torch.autograd.grad(loss, plist, create_graph=True, allow_unused=True)
        _add_hessian_product(hg, names, plist, grads, total)
    return total, hg


def _add_hessian_product(total: dict[str, torch.Tensor], names: Sequence[str], plist: Sequence[torch.Tensor],
                         grads: Sequence[torch.Tensor | None], vector: Mapping[str, torch.Tensor]) -> None:
    """``total += d/dθ (grads · vector)`` for one batch's ``grads`` taken with ``create_graph=True``."""
    z = sum((g * vector[n]).sum() for n, g in zip(names, grads) if g is not None)
    if not isinstance(z, torch.Tensor) or not z.requires_grad:
        return  # the loss is linear in these weights: H v = 0
    for n, h in zip(names, torch.autograd.grad(z, plist, allow_unused=True)):
        if h is not None:
            total[n] += h.detach()


def accumulate_gate_grads(totals: dict[int, torch.Tensor], groups: Sequence, grads: Sequence) -> None:
    """Add each group's gate gradient (float64, on the CPU) to ``totals``; groups without one are skipped."""
    for g, grad in zip(groups, grads):
        if grad is not None:
            totals[g.index] += grad.detach().double().cpu()
