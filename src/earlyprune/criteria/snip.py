"""SNIP: connection sensitivity (Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on
Connection Sensitivity", ICLR 2019).

Importance of weight θ_j is |∂L/∂m_j| at m = 1 for a multiplicative mask m, which equals |θ_j · ∂L/∂θ_j|.
The paper normalises by the sum over all weights; that does not change the ranking, so it is left out.
L is the cross-entropy summed over the scoring batches (the paper and official code use one batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._autograd import loss_gradient
from ._context import Batch, LossFn


def snip_importance(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂L/∂θ| for every given parameter; pruned weights (zero) score zero."""
    grads = loss_gradient(model, params, batches, loss_fn, masks=masks)
    return {n: (p.detach() * grads[n]).abs() for n, p in params.items()}
