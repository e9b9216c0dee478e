"""The transitions pruning criteria score a Q-network on.

* At initialisation there is no experience yet: :func:`random_policy_batches` plays a uniformly random
  policy in an environment of its own (seeded apart from training) and gives its transitions, in the
  order they happened, as batches (the counterpart of the supervised runs' scoring batches drawn from the
  training set). They are not added to the agent's replay buffer and do not count as training steps.
* Early in training (EarlyCroP's trigger, a fixed epoch) the agent's own experience is there:
  :class:`ReplayScoringData` samples batches from its replay buffer when the pruner asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..batches import Batch
from ..errors import PruningError
from .buffer import ReplayBuffer
from .env import make_env, sizes


def random_policy_batches(env_name: str, num_batches: int, batch_size: int, seed: int) -> list[Batch]:
    """``num_batches`` batches of ``batch_size`` consecutive transitions of a uniformly random policy
    (environment reset with ``seed``, actions drawn from a generator seeded with ``seed``)."""
    if num_batches < 1 or batch_size < 1:
        raise PruningError(f"need at least one batch of one transition, got {num_batches} x {batch_size}")
    env = make_env(env_name)
    obs_dim, num_actions = sizes(env)
    count = num_batches * batch_size
    buffer = ReplayBuffer(count, obs_dim)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    try:
        while len(buffer) < count:
            action = int(rng.integers(num_actions))
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, terminated)
            obs = env.reset()[0] if terminated or truncated else next_obs
    finally:
        env.close()
    return [buffer.batch(torch.arange(i * batch_size, (i + 1) * batch_size)) for i in range(num_batches)]


class ReplayScoringData:
    """Scoring batches sampled from ``buffer`` when they are asked for: each iteration draws the same
    ``num_batches`` batches of ``batch_size`` (a generator seeded with ``seed`` each time), so the rounds of
    an iterative prune all score on one set, taken from the experience gathered up to the prune."""

    def __init__(self, buffer: ReplayBuffer, num_batches: int, batch_size: int, seed: int):
        self.buffer = buffer
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.num_batches):
            yield self.buffer.sample(self.batch_size, generator)
