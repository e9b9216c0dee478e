"""DQN's loss as a task: the one-step temporal-difference error of a Q-network on a batch of transitions
(Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015).

For a transition (s, a, r, s', terminated) the target is

    y = r + γ · (1 − terminated) · max_a' Q_target(s', a'),

computed without gradient by the *target network* (a periodic copy of the Q-network), and the loss is
the Huber loss of the error δ = Q(s, a) − y (quadratic for |δ| ≤ 1, linear beyond: DQN's "error
clipping"), averaged over the batch; ``loss="mse"`` takes the squared error instead.

Training minimises this loss, and every criterion scores with it (:meth:`DQNLoss.batch_loss`, the
:class:`~earlyprune.tasks.TransitionTask` hook), so SNIP, GraSP, CroP and ProsPr score a Q-network on a
batch of transitions as they score a classifier on a batch of images. What the criteria that assume
classes do here:

* GraSP's temperature T divides the TD error, Q(s, a) and its target alike (δ / T): as dividing logits
  softens a softmax, it keeps the loss away from its saturated part, here the Huber loss's linear part,
  whose second derivative is 0; for T ≥ max |δ| the scored loss is the squared TD error divided by 2T².
  With ``loss="mse"`` T only scales every score by 1/T⁴ and changes no ranking. There are no classes,
  so GraSP's scoring set is not class-balanced: it scores the transition batches as given.
* SynFlow is data-free: it feeds the all-ones observation to the Q-network (no transition is used).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batches import Batch, to_device
from ..calling import predict
from ..errors import PruningError
from ..model_state import model_device, model_dtype
from ..tasks import TransitionTask
from .buffer import FIELDS

LOSSES = ("huber", "mse")


class DQNLoss(TransitionTask):
    """The TD loss of a Q-network against ``target_network``, discount ``gamma``.

    ``target_network`` is read at every call, so the agent replaces it (after a structured prune) or
    updates its weights (every target update) and the loss follows.
    """

    name = "dqn"

    def __init__(self, target_network: nn.Module, gamma: float = 0.99, loss: str = "huber"):
        if not 0 <= gamma <= 1:
            raise PruningError(f"the discount gamma must lie in [0, 1], got {gamma!r}")
        if loss not in LOSSES:
            raise PruningError(f"unknown TD loss {loss!r}; one of {', '.join(LOSSES)}")
        self.target_network = target_network
        self.gamma = gamma
        self.loss_name = loss

    def td_target(self, transitions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """y = r + γ (1 − terminated) max_a' Q_target(s', a'), without gradient."""
        with torch.no_grad():
            best_next = self.target_network(transitions["next_obs"]).max(1).values
        return transitions["reward"] + self.gamma * (1.0 - transitions["terminated"]) * best_next

    def batch_loss(self, model: nn.Module, batch: Batch, temperature: float = 1.0,
                   params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The mean TD loss of ``model`` (with ``params`` in place of its own, when given) on one
        ``(transitions, rewards)`` batch; the TD error divided by ``temperature`` (GraSP's T)."""
        transitions = _transitions(batch[0])
        transitions = to_device(transitions, model_device(model), model_dtype(model))
        q_values = predict(model, transitions["obs"], params)
        _check(q_values, transitions)
        q_taken = q_values.gather(1, transitions["action"][:, None]).squeeze(1)
        error = q_taken - self.td_target(transitions)
        if temperature != 1.0:
            error = error / temperature
        if self.loss_name == "huber":
            return F.smooth_l1_loss(error, torch.zeros_like(error), beta=1.0)
        return error.pow(2).mean()


def _transitions(inputs: Any) -> Mapping[str, torch.Tensor]:
    if not isinstance(inputs, Mapping) or not set(FIELDS) <= set(inputs):
        got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
        raise PruningError(
            f"the DQN loss needs batches of transitions: (dict with {', '.join(FIELDS)}, rewards), as "
            f"earlyprune.rl.ReplayBuffer.sample gives them; got inputs {got}"
        )
    return inputs


def _check(q_values: torch.Tensor, transitions: Mapping[str, torch.Tensor]) -> None:
    actions = transitions["action"]
    if q_values.dim() != 2 or q_values.shape[0] != actions.shape[0]:
        raise PruningError(f"the Q-network must give (batch, actions) values; got {tuple(q_values.shape)} for "
                           f"{actions.shape[0]} transitions")
    if actions.is_floating_point() or (actions.numel() and (int(actions.min()) < 0
                                                             or int(actions.max()) >= q_values.shape[1])):
        raise PruningError(f"actions must be integers in [0, {q_values.shape[1]}) (the Q-network's outputs)")
