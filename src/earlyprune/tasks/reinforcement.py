"""Reinforcement learning: the hook point of the task.

The agent, environment and replay buffer live in :mod:`earlyprune.rl` (DQN on CartPole-v1, whose TD loss
:class:`earlyprune.rl.DQNLoss` is a :class:`TransitionTask`; gymnasium is needed only there). What a
reinforcement-learning task needs from the library is a scoring loss computed from a batch of transitions
rather than from ``loss(prediction, targets)``; :class:`TransitionTask` is that hook. Subclass it and implement :meth:`Task.batch_loss`
(e.g. a TD error of a Q-network against a target network, or a policy-gradient surrogate); every
data-based criterion (SNIP, GraSP, CroP, ProsPr) reaches the loss only through ``batch_loss``, so pruning
works unchanged::

    class TDLoss(TransitionTask):
        name = "dqn"
        def __init__(self, target_net, gamma=0.99):
            self.target_net, self.gamma = target_net, gamma
        def batch_loss(self, model, batch, temperature=1.0, params=None):
            t, _ = batch                    # inputs: a dict of transition tensors; targets: e.g. the rewards
            q = predict(model, t["obs"], params).gather(1, t["action"][:, None]).squeeze(1)
            with torch.no_grad():
                best = self.target_net(t["next_obs"]).max(1).values
            return F.mse_loss(q, t["reward"] + self.gamma * (1 - t["done"]) * best)

    ep.prune(q_net, "snip", 0.9, data=[(transitions, transitions["reward"])], task=TDLoss(target_net))

The batches stay ``(inputs, targets)`` pairs as everywhere in the library (inputs may be a mapping of
tensors; targets any tensor, e.g. the rewards). The training loop of :mod:`earlyprune.train` is for
supervised tasks and refuses a transition task (``supervised = False``): an agent brings its own loop
(:mod:`earlyprune.rl.loop`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..batches import Batch
from ..errors import PruningError
from .base import Meter, Task


class TransitionTask(Task):
    """A task whose loss is computed from a batch of transitions: override :meth:`batch_loss`."""

    name = "reinforcement_learning"
    metric = "return"
    higher_is_better = True
    supervised = False

    def batch_loss(self, model: nn.Module, batch: Batch, temperature: float = 1.0,
                   params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        raise PruningError(
            f"task {self.name!r} is a transition task: subclass earlyprune.tasks.TransitionTask and implement "
            "batch_loss(model, batch, temperature, params) computing the loss from a batch of transitions"
        )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise PruningError(f"task {self.name!r} computes its loss from transitions (batch_loss), not from outputs")

    def meter(self) -> Meter:
        raise PruningError(f"task {self.name!r} has no supervised metric: an agent measures its return itself")
