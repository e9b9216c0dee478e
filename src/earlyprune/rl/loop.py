"""DQN's training loop, counted in environment steps and cut into epochs of ``steps_per_epoch`` steps.

An *epoch* here is a fixed number of environment steps (not a pass over a dataset: there is none). Each
step the agent acts epsilon-greedily (uniformly at random for the first ``learning_starts`` steps), the
transition goes to the replay buffer, every ``train_every`` steps ``gradient_steps`` batches are replayed
(one optimizer step each, the learning-rate scheduler stepped with them), and every
``target_update_every`` steps the target network is refreshed. Episodes run on across epoch
boundaries. After each epoch ``on_epoch_end`` may prune (then the target network is refreshed at once,
so it is again a copy of the network being trained) and the greedy policy is evaluated.

The result is the supervised loop's :class:`~earlyprune.train.TrainResult`: per epoch the mean TD loss of
its gradient steps (``train_loss``, None before learning starts), the mean return of the training
episodes that ended in it (``train_metric``) and the evaluation (``test_metric`` = mean return over the
fixed seeds, ``test_metrics`` with its spread).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import PruningError
from ..model_state import model_device
from ..energy import EnergyMeter
from ..train import EpochRecord, TrainResult, peak_memory_mb, reset_peak_memory
from .agent import DQNAgent
from .buffer import ReplayBuffer
from .env import make_env, sizes

METRIC = "return"


@dataclass
class EpochStats:
    """What one epoch did: environment steps, gradient steps and the batch size of those steps."""

    env_steps: int = 0
    gradient_steps: int = 0
    batch_size: int = 0


#: ``on_epoch_end(epoch, stats)``: True when it changed the Q-network (a prune or a resize)
EpochCallback = Callable[[int, EpochStats], bool]


def train_dqn(
    agent: DQNAgent,
    env_name: str,
    buffer: ReplayBuffer,
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    seed: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_epoch_end: EpochCallback | None = None,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    on_epoch_record: Callable[[EpochRecord, Any], Any] | None = None,
) -> TrainResult:
    """Train ``agent`` for ``epochs`` x ``steps_per_epoch`` environment steps (see the module). The
    environment's first reset, the exploration and the replayed batches are seeded with ``seed``.
    ``evaluate(q_network)`` gives the metrics recorded after each epoch (``{"return": ...}``);
    ``on_epoch_record(record, q_network)`` is called with each epoch's record once it is recorded (as in
    :func:`earlyprune.train.train`)."""
    if steps_per_epoch < 1:
        raise PruningError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    config = agent.config
    env = make_env(env_name)
    _, num_actions = sizes(env)
    epsilon = config.epsilon(epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    result = TrainResult(task="reinforcement_learning", metric_name=METRIC, higher_is_better=True)
    device = model_device(agent.q_network)
    reset_peak_memory(device)
    started = time.perf_counter()
    energy_meter = EnergyMeter().start()
    obs, _ = env.reset(seed=seed)
    episode_return, step = 0.0, 0
    try:
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            stats = EpochStats(batch_size=batch_size)
            losses: list[float] = []
            finished: list[float] = []
            for _ in range(steps_per_epoch):
                exploring = 1.0 if step < config.learning_starts else epsilon(step)
                action = agent.act(obs, exploring, rng, num_actions)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                buffer.add(obs, action, reward, next_obs, terminated)
                episode_return += float(reward)
                if terminated or truncated:
                    finished.append(episode_return)
                    episode_return = 0.0
                    obs, _ = env.reset()
                else:
                    obs = next_obs
                step += 1
                stats.env_steps += 1
                if step > config.learning_starts and step % config.train_every == 0:
                    for _ in range(config.gradient_steps):
                        losses.append(agent.learn(buffer.sample(batch_size, generator)))
                        if scheduler is not None:
                            scheduler.step()
                    stats.gradient_steps += config.gradient_steps
                    if not math.isfinite(losses[-1]):
                        raise PruningError(f"DQN diverged at epoch {epoch} (TD loss {losses[-1]}); lower the "
                                           "learning rate")
                if step % config.target_update_every == 0:
                    agent.sync_target()
            if on_epoch_end is not None and on_epoch_end(epoch, stats):
                agent.sync_target()
            tested = evaluate(agent.q_network) if evaluate is not None else {}
            result.history.append(EpochRecord(
                epoch, statistics.fmean(losses) if losses else None, None, None, None,
                agent.optimizer.param_groups[0]["lr"], time.perf_counter() - epoch_start, metric_name=METRIC,
                train_metric=statistics.fmean(finished) if finished else None, test_metric=tested.get(METRIC),
                test_metrics=tested,
            ))
            if on_epoch_record is not None:
                on_epoch_record(result.history[-1], agent.q_network)
    finally:
        env.close()
    result.seconds = time.perf_counter() - started
    result.peak_memory_mb = peak_memory_mb(device)
    result.energy_joules, result.energy_source = energy_meter.stop()
    return result
