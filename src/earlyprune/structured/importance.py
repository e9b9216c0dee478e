"""Channel importance (higher = keep) for structured pruning: one value per channel of each group.

* ``random``: i.i.d. uniform from a local generator seeded with ``seed`` (the global RNG is not touched).
* ``magnitude``: L2 norm of the channel's filter, i.e. its slice of every producer's weight (bias
  excluded); for residual-tied channels the norm runs over all layers writing to the channel. Consumers'
  input slices and BatchNorm scales are not counted: this is the filter-norm baseline.
* ``snip``: |∂L/∂c| at c = 1 for a gate c on the channel's output (:mod:`.gates`), L the mean
  cross-entropy of each batch, the gate gradients summed over the batches before the absolute value:
  the structured SNIP of SNAP / SNIP-it, as in the official EarlyCroP code.
* ``crop``: EarlyCroP's structured criterion (Rachwan et al., ICML 2022): |∂z/∂c| at c = 1 with
  z = gᵀ ∇_w L(w, c) and g = Σ_b ∇_w L_b held constant. As in the official code (``CroPStructured``):
  w are the weights of every Conv/Linear layer (no biases, no BatchNorm), g is computed first without a
  graph, summed over the batches; then per batch ``∇_w L_b`` is taken with ``create_graph=True`` through
  the gated model, z_b = Σ g·∇_w L_b (under the current unstructured masks, g·mask), and ∂z_b/∂c is
  summed over the batches before the absolute value. It is the gate analogue of |θ ⊙ Hg|:
  differentiating gᵀ∇_wL with respect to w gives Hg, with respect to the gate the mixed second
  derivative gᵀ ∂²L/∂w∂c.

Gradient scores are taken in training mode by default, like this library's unstructured criteria
(``train=False`` scores in eval mode, as the official code does). Scoring leaves the model exactly as it
was found: weights, BatchNorm statistics, each submodule's mode, ``.grad``, and the global RNG state.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..criteria._context import as_batches, batch_loss, default_loss, isolated
from ..distributed import average_across_ranks
from ..errors import PruningError
from ..masks import applied_masks
from .gates import channel_gates
from .groups import ChannelGroup, GroupPlan, as_groups

STRUCTURED_METHODS = ("random", "magnitude", "snip", "crop")
_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def channel_importance(
    model: nn.Module,
    method: str,
    batches: Iterable[tuple[Any, torch.Tensor]] | None,
    groups: GroupPlan | Sequence[ChannelGroup],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    *,
    train: bool = True,
) -> dict[int, torch.Tensor]:
    """``{group index: float64 importance per channel}`` for ``method`` (one of ``STRUCTURED_METHODS``).

    ``batches`` is any finite iterable of ``(inputs, targets)`` (or one such pair); ``random`` and
    ``magnitude`` need none. ``loss_fn(outputs, targets)`` defaults to mean cross-entropy.
    """
    groups = as_groups(groups)
    if method not in STRUCTURED_METHODS:
        raise PruningError(
            f"method {method!r} has no structured form; structured methods: {', '.join(STRUCTURED_METHODS)}"
        )
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {g.index: torch.rand(g.size, generator=generator, dtype=torch.float64) for g in groups}
    if method == "magnitude":
        return _magnitude(model, groups)
    if batches is None:
        raise PruningError(f"structured {method} needs data: pass batches of (inputs, targets) or a loader")
    data = as_batches(batches)
    loss_fn = loss_fn or default_loss
    with isolated(model, train=train, seed=seed):
        if method == "snip":
            scores = _gate_gradient(model, groups, data, loss_fn)
        else:
            scores = _gate_gradient_flow(model, groups, data, loss_fn)
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
    """Σ_b ∂L_b/∂c at c = 1, then abs."""
    totals = {g.index: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    with channel_gates(model, groups) as gates:
        gate_list = [gates[g.index] for g in groups]
        for batch in batches:
            loss = batch_loss(model, batch, loss_fn)
            grads = torch.autograd.grad(loss, gate_list, allow_unused=True)
            _accumulate(totals, groups, grads)
    return {k: v.abs() for k, v in totals.items()}


def _gate_gradient_flow(model, groups, batches, loss_fn) -> dict[int, torch.Tensor]:
    """Σ_b ∂(g·∇_w L_b)/∂c at c = 1 with g = Σ_b ∇_w L_b constant, then abs (the official CroPStructured)."""
    named = _conv_linear_weights(model)
    if not named:
        raise PruningError("structured crop needs Conv/Linear weights that require gradients")
    names, weights = list(named), list(named.values())
    masks = applied_masks(model)
    mask_of = dict(masks.items()) if masks is not None else {}
    flow_target = [torch.zeros_like(w) for w in weights]
    for batch in batches:  # g without a graph, summed over the batches
        loss = batch_loss(model, batch, loss_fn)
        for acc, grad in zip(flow_target, torch.autograd.grad(loss, weights, allow_unused=True)):
            if grad is not None:
                acc += grad
    for i, name in enumerate(names):  # gradient flow under the current mask (pruned weights don't count)
        if name in mask_of:
            flow_target[i] = flow_target[i] * mask_of[name].to(flow_target[i].dtype)
    totals = {g.index: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    with channel_gates(model, groups) as gates:
        gate_list = [gates[g.index] for g in groups]
        for batch in batches:
            loss = batch_loss(model, batch, loss_fn)
            flow = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            z = sum((f * g).sum() for f, g in zip(flow, flow_target) if f is not None)
            if not isinstance(z, torch.Tensor) or not z.requires_grad:
                continue  # the loss does not depend on the gates through the weights' gradient
            _accumulate(totals, groups, torch.autograd.grad(z, gate_list, allow_unused=True))
    return {k: v.abs() for k, v in totals.items()}


def _conv_linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: weight}`` of every Conv/Linear layer (each shared weight once), the official code's set."""
    named, seen = {}, set()
    for module_name, module in model.named_modules():
        if isinstance(module, _WEIGHT_LAYERS):
            weight = module._parameters.get("weight")
            if weight is not None and weight.requires_grad and id(weight) not in seen:
                seen.add(id(weight))
                named[f"{module_name}.weight" if module_name else "weight"] = weight
    return named


def _accumulate(totals: dict[int, torch.Tensor], groups: list[ChannelGroup], grads: Sequence[Any]) -> None:
    for g, grad in zip(groups, grads):
        if grad is not None:
            totals[g.index] += grad.detach().double().cpu()
