"""The DQN agent (Mnih et al., Nature 2015): a Q-network, its target network, epsilon-greedy actions and
one gradient step on the TD loss of a replayed batch.

:class:`DQNConfig` holds the agent's hyperparameters. Its defaults are the tuned CartPole-v1 DQN of RL
Baselines3 Zoo (Raffin 2020), which learns CartPole in 50,000 environment steps: Huber loss, discount
0.99, 1,000 random steps before learning, then every 256 environment steps 128 gradient steps on
batches of the replay buffer, the target network refreshed every 10 environment steps (so each round of
gradient steps regresses on a fixed copy), gradients clipped to norm 10, epsilon from 1 to 0.04 over the
first 16% of the steps. The learning rate, optimizer, batch size and network come from the run's recipe
(Zoo: Adam, 2.3e-3, batch 64, MLP 256-256). One deliberate difference: the buffer holds 50,000
transitions instead of 100,000 (no run here is longer than the smaller one holds).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..batches import Batch
from ..calling import predict
from ..errors import PruningError
from ..model_state import model_device, model_dtype
from .exploration import LinearEpsilon
from .td import DQNLoss


@dataclass(frozen=True)
class DQNConfig:
    """The DQN agent's hyperparameters (defaults: RL Baselines3 Zoo's CartPole-v1 DQN, see the module)."""

    gamma: float = 0.99
    loss: str = "huber"
    buffer_size: int = 50_000
    learning_starts: int = 1_000  # random actions, no learning, for this many environment steps
    train_every: int = 256  # environment steps between rounds of gradient steps
    gradient_steps: int = 128  # gradient steps per round
    target_update_every: int = 10  # environment steps between copies into the target network
    max_grad_norm: float = 10.0
    epsilon_start: float = 1.0
    epsilon_end: float = 0.04
    exploration_fraction: float = 0.16  # of all environment steps, over which epsilon decays

    def __post_init__(self) -> None:
        for name in ("buffer_size", "train_every", "gradient_steps", "target_update_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PruningError(f"DQNConfig.{name} must be a positive integer, got {value!r}")
        if self.learning_starts < 0 or not 0 <= self.exploration_fraction <= 1:
            raise PruningError("DQNConfig: learning_starts must be >= 0 and exploration_fraction in [0, 1]")

    def epsilon(self, total_steps: int) -> LinearEpsilon:
        """The exploration schedule of a run of ``total_steps`` environment steps."""
        return LinearEpsilon(self.epsilon_start, self.epsilon_end, round(self.exploration_fraction * total_steps))


class DQNAgent:
    """A Q-network trained by DQN. ``q_network`` is the model being pruned and trained (changed in place
    by pruning); ``target`` is a frozen copy of it, refreshed by :meth:`sync_target`; ``loss`` is the
    TD loss (:class:`~earlyprune.rl.td.DQNLoss`), the task every criterion scores with.
    """

    def __init__(self, q_network: nn.Module, optimizer: torch.optim.Optimizer, config: DQNConfig = DQNConfig()):
        self.q_network = q_network
        self.optimizer = optimizer
        self.config = config
        self.target = frozen_copy(q_network)
        self.loss = DQNLoss(self.target, gamma=config.gamma, loss=config.loss)

    @torch.no_grad()
    def greedy_action(self, obs: Any) -> int:
        """argmax_a Q(obs, a) (the network in eval mode, put back in train mode after)."""
        self.q_network.eval()
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=model_device(self.q_network))
        action = int(predict(self.q_network, x[None].to(model_dtype(self.q_network))).argmax(1))
        self.q_network.train()
        return action

    def act(self, obs: Any, epsilon: float, rng: np.random.Generator, num_actions: int) -> int:
        """Epsilon-greedy: a uniformly random action with probability ``epsilon``, else the greedy one."""
        if rng.random() < epsilon:
            return int(rng.integers(num_actions))
        return self.greedy_action(obs)

    def learn(self, batch: Batch) -> float:
        """One gradient step on the TD loss of ``batch`` (gradients clipped to ``max_grad_norm``); the loss."""
        self.q_network.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss.batch_loss(self.q_network, batch)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_network.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def sync_target(self) -> None:
        """Copy the Q-network's weights into the target network; rebuild the target when the Q-network's
        shapes changed (a structured prune or an activation-density resize removed units)."""
        online = dict(self.q_network.named_parameters())
        target = dict(self.target.named_parameters())
        if online.keys() != target.keys() or any(online[n].shape != target[n].shape for n in online):
            self.target = frozen_copy(self.q_network)
            self.loss.target_network = self.target
            return
        for name, param in target.items():
            param.copy_(online[name])


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode without gradients, and without the forward hooks the original
    carries (an activation-density pruner's counters are bound to the original; copying them would copy the
    pruner). A masked model's binding is left off as well: the copy's weights are the masked ones."""
    saved = []
    for module in model.modules():
        saved.append((module, module._forward_hooks, module._forward_pre_hooks))
        module._forward_hooks, module._forward_pre_hooks = type(module._forward_hooks)(), \
            type(module._forward_pre_hooks)()
    try:
        clone = copy.deepcopy(model)
    finally:
        for module, hooks, pre_hooks in saved:
            module._forward_hooks, module._forward_pre_hooks = hooks, pre_hooks
    for module in clone.modules():
        module.__dict__.pop("_earlyprune_masking", None)
    return clone.requires_grad_(False).eval()
