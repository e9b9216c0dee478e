"""CroP: connectivity preservation by gradient flow (Rachwan, Zügner, Charpiat, Günnemann, Lienen,
"Winning the Lottery Ahead of Time: Efficient Early Network Pruning", ICML 2022; EarlyCroP when applied
early in training).

Importance of weight θ is |θ ⊙ Hg|: the magnitude of the weight's first-order contribution to the
gradient norm gᵀg, so weights that change gradient flow the most in *either* direction are kept
(GraSP keeps only one sign). Unlike GraSP there is no temperature, and the scores are taken under the
current mask: g is the gradient of the masked network (zero for pruned weights), so iterative
CroP-it rescoring sees the network as it now is.

Structured (EarlyCroP structured): |∂z/∂c| at c = 1 for a gate c on each channel's output, with
z = gᵀ ∇_w L(w, c) and g = Σ_b ∇_w L_b held constant. As in the official code (``CroPStructured``): w are
the weights of every Conv/Linear layer (no biases, no BatchNorm), g is computed first without a graph,
summed over the batches; then per batch ``∇_w L_b`` is taken with ``create_graph=True`` through the gated
model, z_b = Σ g·∇_w L_b (under the current unstructured masks, g·mask), and ∂z_b/∂c is summed over the
batches before the absolute value. It is the gate analogue of |θ ⊙ Hg|: differentiating gᵀ∇_wL with
respect to w gives Hg, with respect to the gate the mixed second derivative gᵀ ∂²L/∂w∂c.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PruningError
from ..loss import batch_loss
from ..prunable import prunable_parameters
from ..structured.gates import channel_gates
from ._autograd import accumulate_gate_grads, gradient_and_hessian_gradient
from ._batchnorm_second_order import fused_batchnorm_second_order
from .official import Official, earlycrop_schedule
from .spec import Criterion, Scoring

_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def crop_importance(scoring: Scoring) -> dict[str, torch.Tensor]:
    """|θ ⊙ (H g)| under the current masks; higher = keep."""
    model, params, batches, loss_fn = scoring.model, scoring.params, scoring.batches, scoring.loss_fn
    _, hg = gradient_and_hessian_gradient(model, params, batches, loss_fn, masks=scoring.masks)
    return {n: (p.detach() * hg[n]).abs() for n, p in params.items()}


def crop_channel_importance(scoring: Scoring) -> dict[int, torch.Tensor]:
    """Σ_b ∂(g·∇_w L_b)/∂c at c = 1 with g = Σ_b ∇_w L_b constant, then abs (the official CroPStructured)."""
    model, groups, batches, loss_fn = scoring.model, scoring.groups, scoring.batches, scoring.loss_fn
    named = _conv_linear_weights(model)
    if not named:
        raise PruningError("structured crop needs Conv/Linear weights that require gradients")
    names, weights = list(named), list(named.values())
    mask_of = dict(scoring.masks or {})
    flow_target = [torch.zeros_like(w) for w in weights]
    totals = {g.index: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    # The gates are 1, so the gated model computes the same g; the last batch's gradient is taken once with
    # its graph kept and differentiated again for ∂z/∂c (as gradient_and_hessian_gradient does, with the
    # same cheap BatchNorm second derivative).
    with channel_gates(model, groups) as gates, fused_batchnorm_second_order(model):
        gate_list = [gates[g.index] for g in groups]
        for index, batch in enumerate(batches):  # g, summed over the batches
            loss = batch_loss(model, batch, loss_fn)
            last = index == len(batches) - 1
            kept = torch.autograd.grad(loss, weights, create_graph=last, allow_unused=True)
            for acc, grad in zip(flow_target, kept):
                if grad is not None:
                    acc += grad.detach()
        for i, name in enumerate(names):  # gradient flow under the current mask (pruned weights don't count)
            if name in mask_of:
                flow_target[i] = flow_target[i] * mask_of[name].to(device=flow_target[i].device,
                                                                   dtype=flow_target[i].dtype)

        def add_gate_grads(flow) -> None:
            z = sum((f * g).sum() for f, g in zip(flow, flow_target) if f is not None)
            if isinstance(z, torch.Tensor) and z.requires_grad:  # else no dependence through the gradient
                accumulate_gate_grads(totals, groups, torch.autograd.grad(z, gate_list, allow_unused=True))

        add_gate_grads(kept)
        del kept, loss
        for batch in batches[:-1]:
            loss = batch_loss(model, batch, loss_fn)
            add_gate_grads(torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True))
    return {k: v.abs() for k, v in totals.items()}


def _conv_linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: weight}`` of every Conv/Linear layer (each shared weight once), the official code's set,
    plus the other weights this library prunes (recurrent weight matrices, attention projections, GPT-2's
    Conv1D), so their gradient flow counts too on models that have them."""
    named, seen = {}, set()
    for module_name, module in model.named_modules():
        if isinstance(module, _WEIGHT_LAYERS):
            weight = module._parameters.get("weight")
            if weight is not None and weight.requires_grad and id(weight) not in seen:
                seen.add(id(weight))
                named[f"{module_name}.weight" if module_name else "weight"] = weight
    for name, weight in prunable_parameters(model, warn=False).items():
        if weight.requires_grad and id(weight) not in seen:
            seen.add(id(weight))
            named[name] = weight
    return named


CROP = Criterion(
    "crop", paper="Rachwan et al., EarlyCroP, ICML 2022",
    summary="abs(θ ⊙ Hg) under the current mask, gradient-flow preservation",
    importance=crop_importance, channel_importance=crop_channel_importance,
    official=Official(
        "johnrachwan123/Winning-The-Lottery-Ahead-of-Time, models/criterions/CroP.py, EarlyCroP.py, "
        "CroPStructured.py",
        settings={"train": False, "num_batches": 5, "rule": "earlycrop"},
        schedules={"crop-it": earlycrop_schedule},
        channel_settings={"train": False, "num_batches": 5, "gate_at": "output"},
        notes=("eval mode, 5 scoring batches", "keeps the weights scoring > the n-th largest, n = int(N*(1-s)) "
               "(rule='earlycrop': n - 1 without ties)", "crop-it schedule from 0.25 for targets <= 0.5",
               "structured: gates on the conv output (before BatchNorm), eval mode, 5 batches"),
    ),
)
CROP_IT = CROP.variant(
    "crop-it", paper="Rachwan et al., EarlyCroP (CroP-it), ICML 2022",
    summary="iterative crop, rescored under the current mask", schedule="crop-it",
)
