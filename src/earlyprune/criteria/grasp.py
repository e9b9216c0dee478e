"""GraSP: gradient signal preservation (Wang, Zhang, Grosse, "Picking Winning Tickets Before Training
by Preserving Gradient Flow", ICLR 2020).

The score of the official code (alecwangcq/GraSP, pruner/GraSP.py) is S = −θ ⊙ Hg, and it removes the
weights with the *highest* S. As importance (higher = keep) that is I = θ ⊙ Hg, signed, not an absolute
value: removing a weight with large positive θ·(Hg) would reduce the gradient norm the most.

Details kept from the official code:
* g is the gradient of the cross-entropy of the logits divided by a temperature T = 200, summed over
  the scoring batches (the official code sums over two halves of its class-balanced set);
* Hg is computed by differentiating z = g·∇L(θ) (same temperature) once more, summed over the batches;
* the scoring set is class-balanced, 10 samples per class (chosen by :func:`earlyprune.prune` when it
  is given a loader; batches given directly are used as they are);
* the Hessian is over the prunable weights only, and the model is in training mode (BatchNorm uses
  batch statistics), as a freshly built network is in the official code.
"""

from __future__ import annotations

import torch

from ..errors import PruningError
from ._autograd import gradient_and_hessian_gradient
from .official import Official, xavier_redraw_linear
from .spec import Criterion, Scoring

DEFAULT_TEMPERATURE = 200.0


def grasp_importance(
    scoring: Scoring, *, temperature: float = DEFAULT_TEMPERATURE, reinit: bool = False
) -> dict[str, torch.Tensor]:
    """θ ⊙ (H g) with g and H taken on logits / ``temperature``; higher = keep.

    ``reinit=True`` is the official code's default (``preset="official"``): every Linear weight of the
    scored copy is first re-drawn with Xavier-normal (:func:`.official.xavier_redraw_linear`), so θ, g and
    Hg are those of the re-drawn network; the model itself keeps its weights. The paper scores the network
    as initialised, so the default is False.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise PruningError(f"temperature must be a number > 0 (GraSP's T, default 200), got {temperature!r}")
    model, params, batches, loss_fn = scoring.model, scoring.params, scoring.batches, scoring.loss_fn
    if reinit:
        xavier_redraw_linear(model, scoring.masks)
    _, hg = gradient_and_hessian_gradient(model, params, batches, loss_fn, temperature, masks=scoring.masks)
    return {n: p.detach() * hg[n] for n, p in params.items()}


GRASP = Criterion(
    "grasp", paper="Wang, Zhang, Grosse, GraSP, ICLR 2020",
    summary="θ ⊙ Hg with g on logits/T (signed), gradient-signal preservation",
    importance=grasp_importance, data="class_balanced",
    official=Official(
        "alecwangcq/GraSP, pruner/GraSP.py", options={"reinit": True}, settings={"rule": "grasp"},
        notes=("Linear weights re-drawn with Xavier-normal in the scored copy (reinit=True)",
               "keeps every weight scoring >= the k-th smallest, k = int(s*N) (rule='grasp')"),
    ),
)
