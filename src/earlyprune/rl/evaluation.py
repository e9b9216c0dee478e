"""Evaluation of a Q-network: the mean return of its greedy policy over episodes started from a fixed list
of seeds, the same for every run, so that two networks are compared on the same starting states.

The greedy policy (argmax_a Q(s, a), no exploration) is deterministic, and a seeded reset fixes each
episode's start, so the evaluation is deterministic: the same network gets the same return. The
episodes run side by side, the Q-network called once per step on the observations of every episode still
running.
"""

from __future__ import annotations

import statistics
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..calling import predict
from ..model_state import model_device, model_dtype, preserved_modes
from .env import make_env

#: The evaluation episodes' seeds: ten, apart from the training seeds (0, 1, ...) and their scoring
#: environments (seed + 1).
EVAL_SEEDS: tuple[int, ...] = tuple(range(10_000, 10_010))


@torch.no_grad()
def evaluate_greedy(q_network: nn.Module, env_name: str, seeds: Sequence[int] = EVAL_SEEDS) -> dict[str, float]:
    """``{"return": mean, "return_std": std, "return_min": min, "episodes": n}`` of the greedy policy of
    ``q_network`` over one episode per seed (reset with that seed), in eval mode."""
    if not seeds:
        raise ValueError("evaluate_greedy needs at least one seed")
    envs = [make_env(env_name) for _ in seeds]
    observations = [env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds)]
    returns = [0.0] * len(envs)
    running = list(range(len(envs)))
    device, dtype = model_device(q_network), model_dtype(q_network)
    try:
        with preserved_modes(q_network, train=False):
            while running:
                batch = torch.as_tensor(np.stack([observations[i] for i in running]), dtype=dtype, device=device)
                actions = predict(q_network, batch).argmax(1).tolist()
                still = []
                for i, action in zip(running, actions):
                    observations[i], reward, terminated, truncated, _ = envs[i].step(int(action))
                    returns[i] += float(reward)
                    if not (terminated or truncated):
                        still.append(i)
                running = still
    finally:
        for env in envs:
            env.close()
    return {"return": statistics.fmean(returns),
            "return_std": statistics.stdev(returns) if len(returns) > 1 else 0.0,
            "return_min": min(returns), "episodes": float(len(returns))}
