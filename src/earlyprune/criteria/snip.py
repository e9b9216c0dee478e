"""SNIP: connection sensitivity (Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on
Connection Sensitivity", ICLR 2019), and its iterative variant SNIP-it.

Importance of weight θ_j is |∂L/∂m_j| at m = 1 for a multiplicative mask m, which equals |θ_j · ∂L/∂θ_j|.
The paper normalises by the sum over all weights; that does not change the ranking, so it is left out.
L is the cross-entropy summed over the scoring batches (the paper and official code use one batch).

Structured SNIP (SNAP / SNIP-it, Verdenius, Stol, Forré 2020) scores a channel by |∂L/∂c| at c = 1 for a
gate c on the channel's output (:mod:`earlyprune.structured.gates`), L the mean cross-entropy of each
batch, the gate gradients summed over the batches before the absolute value. It uses cross-entropy, as
the paper does. The EarlyCroP repository's SNIP and SNAP use ``nll_loss`` on raw logits (−mean of the
target's logit, not a cross-entropy: a bug of that code), score in eval mode on 5 batches and gate the conv
output; ``preset="official"`` reproduces that code, bug included (:mod:`.official`).
"""

from __future__ import annotations

import torch

from ..loss import batch_loss
from ..structured.gates import channel_gates
from ._autograd import accumulate_gate_grads, loss_gradient
from .official import Official, nll_on_logits
from .spec import Criterion, Scoring


def snip_importance(scoring: Scoring) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂L/∂θ| for every given parameter; pruned weights (zero) score zero."""
    grads = loss_gradient(scoring.model, scoring.params, scoring.batches, scoring.loss_fn, masks=scoring.masks)
    return {n: (p.detach() * grads[n]).abs() for n, p in scoring.params.items()}


def snip_channel_importance(scoring: Scoring) -> dict[int, torch.Tensor]:
    """Σ_b ∂L_b/∂c at c = 1 for a gate c on every channel, then abs."""
    groups = scoring.groups
    totals = {g.index: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    with channel_gates(scoring.model, groups) as gates:
        gate_list = [gates[g.index] for g in groups]
        for batch in scoring.batches:
            loss = batch_loss(scoring.model, batch, scoring.loss_fn)
            grads = torch.autograd.grad(loss, gate_list, allow_unused=True)
            accumulate_gate_grads(totals, groups, grads)
    return {k: v.abs() for k, v in totals.items()}


SNIP = Criterion(
    "snip", paper="Lee, Ajanthan, Torr, SNIP, ICLR 2019", summary="abs(θ ⊙ ∂L/∂θ), connection sensitivity",
    importance=snip_importance, channel_importance=snip_channel_importance,
    official=Official(
        "johnrachwan123/Winning-The-Lottery-Ahead-of-Time, models/criterions/SNIP.py, SNAP.py",
        settings={"train": False, "num_batches": 5, "loss_fn": nll_on_logits, "rule": "earlycrop"},
        channel_settings={"train": False, "num_batches": 5, "loss_fn": nll_on_logits, "gate_at": "output"},
        notes=("eval mode, 5 scoring batches", "nll_loss on raw logits (a bug of that code: the paper's loss is "
               "cross-entropy)", "keeps the weights scoring > the n-th largest, n = int(N*(1-s)) (rule='earlycrop')",
               "structured (SNAP): gates on the conv output, eval mode, 5 batches, nll_loss on raw logits"),
    ),
)
SNIP_IT = SNIP.variant(
    "snip-it", paper="Verdenius, Stol, Forré, SNIP-it, 2020; schedule of Rachwan et al., ICML 2022",
    summary="iterative snip, rescored under the current mask", schedule="crop-it",
)
