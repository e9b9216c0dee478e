"""Environments: gymnasium imported only when an environment is made, with a clear error without it.

``earlyprune`` names environments as it names datasets (``"cartpole"``); :data:`ENVIRONMENTS` maps each
name to its gymnasium id. Only environments with a vector observation (a ``Box`` of one dimension) and
a discrete action space are supported: a Q-network gives one value per action.
"""

from __future__ import annotations

from typing import Any

from ..errors import PruningError

#: earlyprune's name -> gymnasium's id
ENVIRONMENTS: dict[str, str] = {"cartpole": "CartPole-v1"}


class GymnasiumMissingError(ModuleNotFoundError, ValueError):
    """gymnasium is not installed (a ValueError too, so the command line reports it without a traceback)."""


def gymnasium() -> Any:
    """The ``gymnasium`` module, imported now; :class:`GymnasiumMissingError` saying how to get it."""
    try:
        import gymnasium as gym
    except ModuleNotFoundError as error:
        raise GymnasiumMissingError(
            "reinforcement learning needs gymnasium, which is not installed: pip install earlyprune[rl] "
            "(or pip install gymnasium)"
        ) from error
    return gym


def env_id(name: str) -> str:
    """gymnasium's id for ``name`` (``"cartpole"`` -> ``"CartPole-v1"``); a gymnasium id is kept as given."""
    return ENVIRONMENTS.get(name.lower(), name) if isinstance(name, str) else name


def make_env(name: str) -> Any:
    """A gymnasium environment ``name`` (earlyprune's name or a gymnasium id). Seed it on its first reset
    (``env.reset(seed=...)``): later resets without a seed continue its generator, so the episodes are
    reproducible. Refuses environments without a vector observation or discrete actions."""
    gym = gymnasium()
    env = gym.make(env_id(name))
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(action_space, gym.spaces.Discrete):
        env.close()
        raise PruningError(f"environment {name!r} has {type(action_space).__name__} actions; the DQN agent needs a "
                           "discrete action space (one Q-value per action)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        env.close()
        raise PruningError(f"environment {name!r} has observations {obs_space}; the Q-network MLP takes a vector "
                           "observation (a one-dimensional Box)")
    return env


def sizes(env: Any) -> tuple[int, int]:
    """``(observation size, number of actions)`` of an environment made by :func:`make_env`."""
    return int(env.observation_space.shape[0]), int(env.action_space.n)
