"""Epsilon-greedy exploration: the chance of a random action, decayed linearly with the environment
steps (DQN, Mnih et al. 2015: from 1 to 0.1 over the first million frames; RL Baselines3 Zoo's
CartPole-v1 DQN: from 1 to 0.04 over the first 16% of training)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PruningError


@dataclass(frozen=True)
class LinearEpsilon:
    """epsilon(step) = start + (end − start) · min(1, step / decay_steps): ``start`` at step 0, ``end``
    from step ``decay_steps`` on."""

    start: float = 1.0
    end: float = 0.04
    decay_steps: int = 8000

    def __post_init__(self) -> None:
        if not (0 <= self.end <= 1 and 0 <= self.start <= 1):
            raise PruningError(f"epsilon must lie in [0, 1], got start {self.start!r}, end {self.end!r}")
        if self.decay_steps < 0:
            raise PruningError(f"decay_steps must be >= 0, got {self.decay_steps!r}")

    def __call__(self, step: int) -> float:
        if self.decay_steps == 0:
            return self.end
        return self.start + (self.end - self.start) * min(1.0, step / self.decay_steps)
