"""When to prune early in training: EarlyCroP's weight-distance trigger (the sparsity of each round comes
from :mod:`earlyprune.schedules`).

EarlyCroP (Rachwan et al., ICML 2022) trains dense until training has settled and then prunes. After each
epoch t it measures the normalised distance of the weights from those after epoch 1,

    d_t = ‖W_ref − W_t‖ / ‖W_ref‖,

and prunes once the distance stops changing: |d_t − d_{t−1}| < threshold, or at a cap epoch.

The threshold. In the official code the threshold is derived from the pruning limit in a way that, for
structured limits of 0.9 and above, becomes ≤ 0, so the condition can never hold and pruning only
happens at the cap. This library defines the threshold from the training run itself, which is always
positive: ``threshold = relative_threshold · d_2`` (d_2 is the distance after epoch 2, the first change
that can be measured, so the rule reads "prune when the per-epoch change of the distance has fallen to
``relative_threshold`` of its first value"). The default ``relative_threshold`` is documented on
:class:`WeightDistanceTrigger`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import PruningError

DEFAULT_RELATIVE_THRESHOLD = 0.1


@dataclass
class WeightDistanceTrigger:
    """EarlyCroP's trigger as pure logic on the sequence of distances d_1, d_2, ... (d_1 = 0).

    ``update(epoch, distance)`` returns True on the epoch pruning should happen. ``cap_epoch`` forces it
    at that epoch at the latest; ``min_epoch`` (default 3, the first epoch a change of the change can be
    seen) forbids it earlier.
    """

    relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD
    cap_epoch: int | None = None
    min_epoch: int = 3
    distances: dict[int, float] = field(default_factory=dict)
    threshold: float | None = None
    fired_at: int | None = None

    def __post_init__(self) -> None:
        if not self.relative_threshold > 0:
            raise PruningError(f"relative_threshold must be > 0, got {self.relative_threshold}")
        if self.cap_epoch is not None and self.cap_epoch < 1:
            raise PruningError(f"cap_epoch must be >= 1, got {self.cap_epoch}")

    def update(self, epoch: int, distance: float) -> bool:
        if self.fired_at is not None:
            return False
        self.distances[epoch] = float(distance)
        if epoch == 2:
            self.threshold = self.relative_threshold * abs(distance)
        fire = False
        if self.cap_epoch is not None and epoch >= self.cap_epoch:
            fire = True
        elif epoch >= self.min_epoch and self.threshold is not None and (epoch - 1) in self.distances:
            fire = abs(distance - self.distances[epoch - 1]) < self.threshold
        if fire:
            self.fired_at = epoch
        return fire


class WeightDistance:
    """Tracks d_t = ‖W_ref − W_t‖ / ‖W_ref‖ over the given parameters, W_ref = weights at :meth:`set_reference`."""

    def __init__(self, params: dict[str, nn.Parameter]):
        self.params = params
        self.reference: dict[str, torch.Tensor] | None = None

    def set_reference(self) -> None:
        self.reference = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def distance(self) -> float:
        if self.reference is None:
            raise PruningError("the reference weights are not set yet (set_reference after epoch 1)")
        diff = sum(float(((p.detach() - self.reference[n]) ** 2).sum()) for n, p in self.params.items())
        norm = sum(float((r**2).sum()) for r in self.reference.values())
        return (diff / norm) ** 0.5 if norm > 0 else 0.0
