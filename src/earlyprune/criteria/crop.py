"""CroP: connectivity preservation by gradient flow (Rachwan, Zügner, Charpiat, Günnemann, Lienen,
"Winning the Lottery Ahead of Time: Efficient Early Network Pruning", ICML 2022; EarlyCroP when applied
early in training).

Importance of weight θ is |θ ⊙ Hg|: the magnitude of the weight's first-order contribution to the
gradient norm gᵀg, so weights that change gradient flow the most in *either* direction are kept
(GraSP keeps only one sign). Unlike GraSP there is no temperature, and the scores are taken under the
current mask: g is the gradient of the masked network (zero for pruned weights), so iterative
CroP-it rescoring sees the network as it now is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._autograd import hessian_gradient_product, loss_gradient
from ._context import Batch, LossFn


def crop_importance(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """|θ ⊙ (H g)| under the current masks; higher = keep."""
    grads = loss_gradient(model, params, batches, loss_fn, masks=masks)
    hg = hessian_gradient_product(model, params, batches, grads, loss_fn)
    return {n: (p.detach() * hg[n]).abs() for n, p in params.items()}
