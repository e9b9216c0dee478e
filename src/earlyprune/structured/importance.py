"""Channel importance (higher = keep) for structured pruning, one value per channel of each group.

* ``random``: uniform, seeded.
* ``magnitude``: L2 norm of the channel's outgoing weights, over every producer of the group (so a
  residual-tied channel counts all layers writing to it).
* ``snip``: |∂L/∂c| at c = 1 for a gate c on the channel's output: connection sensitivity of a channel
  (the structured SNIP of the SNIP-it / EarlyCroP code).
* ``crop``: EarlyCroP's structured criterion (Rachwan et al., ICML 2022): the channel's effect on the
  gradient flow, |∂z/∂c| at c = 1 with z = gᵀ ∇_θ L(θ, c) and g = ∇_θ L held constant, the gate analogue
  of the unstructured |θ ⊙ Hg| (differentiating gᵀ∇_θL with respect to θ gives Hg; with respect to the
  gate gives the mixed second derivative gᵀ ∂²L/∂θ∂c).

Scoring leaves the model as it was found (weights, BatchNorm statistics, modes, gradients, RNG).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..criteria._context import Batch, batch_loss, default_loss, isolated
from ..distributed import average_across_ranks
from ..errors import PruningError
from .gates import channel_gates
from .groups import ChannelGroup

STRUCTURED_METHODS = ("random", "magnitude", "snip", "crop")


def channel_importance(
    model: nn.Module,
    method: str,
    groups: list[ChannelGroup],
    batches: Sequence[Batch] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """``{group index: importance per channel}`` for ``method`` (one of ``STRUCTURED_METHODS``)."""
    if method not in STRUCTURED_METHODS:
        raise PruningError(
            f"method {method!r} has no structured form; structured methods: {', '.join(STRUCTURED_METHODS)}"
        )
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {g.index: torch.rand(g.size, generator=generator, dtype=torch.float64) for g in groups}
    if method == "magnitude":
        return _magnitude(model, groups)
    if not batches:
        raise PruningError(f"structured {method} needs data: pass batches of (inputs, targets) or a loader")
    loss_fn = loss_fn or default_loss
    with isolated(model, train=True, seed=seed):
        if method == "snip":
            scores = _gate_gradient(model, groups, batches, loss_fn)
        else:
            scores = _gate_gradient_flow(model, groups, batches, loss_fn)
    return average_across_ranks(scores)  # each rank scored its own shard under torch.distributed


def _magnitude(model: nn.Module, groups: list[ChannelGroup]) -> dict[int, torch.Tensor]:
    modules = dict(model.named_modules())
    scores = {}
    for g in groups:
        total = torch.zeros(g.size, dtype=torch.float64)
        for name in g.producers:
            weight = modules[name].weight.detach()
            total += weight.reshape(weight.shape[0], -1).double().pow(2).sum(1).cpu()
        scores[g.index] = total.sqrt()
    return scores


def _gate_gradient(model, groups, batches, loss_fn) -> dict[int, torch.Tensor]:
    totals = {g.index: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    with channel_gates(model, groups) as gates:
        for batch in batches:
            loss = batch_loss(model, batch, loss_fn)
            grads = torch.autograd.grad(loss, [gates[g.index] for g in groups], allow_unused=True)
            for g, grad in zip(groups, grads):
                if grad is not None:
                    totals[g.index] += grad.detach().double().cpu()
    return {k: v.abs() for k, v in totals.items()}


def _gate_gradient_flow(model, groups, batches, loss_fn) -> dict[int, torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    for batch in batches:
        loss = batch_loss(model, batch, loss_fn)
        for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                acc += g
    totals = {g.index: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    with channel_gates(model, groups) as gates:
        gate_list = [gates[g.index] for g in groups]
        for batch in batches:
            loss = batch_loss(model, batch, loss_fn)
            flow = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            z = sum((f * g).sum() for f, g in zip(flow, grads) if f is not None)
            dz = torch.autograd.grad(z, gate_list, allow_unused=True)
            for g, d in zip(groups, dz):
                if d is not None:
                    totals[g.index] += d.detach().double().cpu()
    return {k: v.abs() for k, v in totals.items()}
