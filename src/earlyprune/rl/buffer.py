"""The replay buffer of DQN (Mnih et al., Nature 2015): the last ``capacity`` transitions, sampled
uniformly with replacement, as batches in the library's ``(inputs, targets)`` convention.

A batch of transitions is the pair ``(transitions, rewards)``: ``transitions`` is a dict of tensors

* ``obs`` (B, obs_dim) float32, the observation the action was taken in;
* ``action`` (B,) int64;
* ``reward`` (B,) float32;
* ``next_obs`` (B, obs_dim) float32, the observation after the step;
* ``terminated`` (B,) float32, 1 where the episode ended in a terminal state (the pole fell), 0 where it
  goes on or was only cut by the time limit (gymnasium's ``truncated``): a truncated episode's next state
  still has a value, so its TD target bootstraps from it;

and the targets are the rewards (the criteria and batch checks want a tensor there; the TD loss reads
everything from the dict). Models are called on ``transitions["obs"]``
(:meth:`~earlyprune.models.qnetwork.QNetworkMLP.earlyprune_inputs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..batches import Batch
from ..errors import PruningError

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class ReplayBuffer:
    """A ring of the last ``capacity`` transitions (the oldest is overwritten once it is full)."""

    def __init__(self, capacity: int, obs_dim: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise PruningError(f"the replay buffer's capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.action = torch.zeros(capacity, dtype=torch.int64)
        self.reward = torch.zeros(capacity)
        self.terminated = torch.zeros(capacity)
        self.position = 0  # where the next transition goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Any, action: int, reward: float, next_obs: Any, terminated: bool) -> None:
        """Store one transition (observations as arrays or tensors)."""
        i = self.position
        self.obs[i] = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        self.next_obs[i] = torch.as_tensor(np.asarray(next_obs, dtype=np.float32))
        self.action[i] = int(action)
        self.reward[i] = float(reward)
        self.terminated[i] = float(bool(terminated))
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` stored transitions drawn uniformly with replacement (``generator`` makes it
        reproducible), as a ``(transitions, rewards)`` batch."""
        if self.size == 0:
            raise PruningError("the replay buffer is empty: add transitions before sampling")
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return self.batch(index)

    def batch(self, index: torch.Tensor) -> Batch:
        """The transitions at positions ``index`` as a ``(transitions, rewards)`` batch (copies)."""
        transitions = {name: getattr(self, name)[index] for name in FIELDS}
        return transitions, transitions["reward"]
