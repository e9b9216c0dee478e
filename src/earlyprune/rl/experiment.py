"""One reinforcement-learning run for ``earlyprune run --dataset cartpole --model dqn-mlp``: build the
Q-network, prune it (at initialisation, early, at a fixed epoch, or by activation density), train it by
DQN and return the same record as a supervised run, with the mean episode return as its metric.

How the run's settings read here:

* ``epochs`` x ``steps_per_epoch`` (default 1,000) environment steps; an epoch is that many steps
  (:mod:`earlyprune.rl.loop`), so ``--when epoch:N``, EarlyCroP's trigger and cap (half the epochs),
  ``--prune-every`` and the per-epoch curve all count these epochs;
* ``batch_size``: the replayed batches (training and scoring); ``lr``, ``optimizer``, ``weight_decay``,
  ``momentum``, ``lr_schedule``: the Q-network's optimizer, its schedule stepped per gradient step;
* ``score_batches``: scoring batches of ``batch_size`` transitions: at initialisation from a random
  policy in an environment seeded ``seed + 1``; during training sampled from the replay buffer;
* ``augment`` does not apply (ignored); ``train_subset`` does not apply (refused);
* the agent's own hyperparameters are :class:`~earlyprune.rl.agent.DQNConfig`'s defaults (in the record
  as ``dqn``).

The metric (``final_metric``) is the greedy policy's mean return over the fixed evaluation seeds
(:data:`~earlyprune.rl.evaluation.EVAL_SEEDS`) after the last epoch; ``best_metric`` the best epoch's.
Training FLOPs count, per epoch at the network's size then, forward + backward (3 x forward) of each
replayed transition, one forward of the target network per replayed transition, and one forward per
environment step to act; the evaluation episodes are not counted (as the supervised runs' test set).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .. import models
from ..errors import PruningError
from ..experiments.run import finished_fields, prune_at_init
from ..metrics import report
from ..train import make_optimizer, make_scheduler
from .agent import DQNAgent, DQNConfig
from .buffer import ReplayBuffer
from .env import make_env, sizes
from .evaluation import EVAL_SEEDS, evaluate_greedy
from .loop import EpochStats, train_dqn
from .scoring import ReplayScoringData, random_policy_batches

#: environment steps per epoch when the run does not say (``--steps-per-epoch``)
DEFAULT_STEPS_PER_EPOCH = 1000
TASK = "reinforcement_learning"


def run_rl_experiment(config: Any, threads: int | None = None, device: str | None = None,
                      dqn: DQNConfig = DQNConfig(), board: Any = None) -> dict[str, Any]:
    """Run ``config`` (a :class:`~earlyprune.experiments.config.RunConfig` on an environment) and return
    its record. Deterministic on the CPU for a given seed. ``board``: a
    :class:`~earlyprune.tensorboard_log.TensorBoardLog` the run logs to (closed by the caller)."""
    from ..experiments.config import DENSE
    from ..experiments.run import resolve_device

    data, network, pruning, training = config.data, config.network, config.pruning, config.training
    if data.train_subset:
        raise PruningError("--train-subset does not apply to reinforcement learning (there is no training set): "
                           "shorten the run with --epochs or --steps-per-epoch")
    spec = models.spec(network.model)
    if spec.inputs != "observations":
        raise PruningError(f"{data.dataset!r} is an environment: it needs a Q-network taking observations "
                           f"(dqn-mlp), not {spec.name!r}")
    if threads:
        torch.set_num_threads(threads)
    target = resolve_device(device)
    steps_per_epoch = data.steps_per_epoch or DEFAULT_STEPS_PER_EPOCH
    env = make_env(data.dataset)
    obs_dim, num_actions = sizes(env)
    env.close()

    torch.manual_seed(config.seed)
    model = models.create(network.model, num_classes=num_actions, width=network.width, init=network.init,
                          obs_dim=obs_dim)
    model.to(target)
    optimizer = make_optimizer(model, training)
    gradient_steps_per_epoch = max(1, steps_per_epoch * dqn.gradient_steps // dqn.train_every)
    scheduler = make_scheduler(optimizer, training, gradient_steps_per_epoch)
    agent = DQNAgent(model, optimizer, dqn)
    buffer = ReplayBuffer(dqn.buffer_size, obs_dim)
    dense = report(model)
    record: dict[str, Any] = {"key": config.key(), **config.as_dict()}
    record.update(task=TASK, metric_name="return", higher_is_better=True, dense_params=dense.params,
                  dense_flops=dense.flops, steps_per_epoch=steps_per_epoch, env_steps=config.training.epochs *
                  steps_per_epoch, eval_seeds=list(EVAL_SEEDS), dqn=dataclasses.asdict(dqn))
    if board is not None:
        board.settings(record)

    masks = None
    scoring_seconds = 0.0
    pruner_step = None
    if pruning.method != DENSE and pruning.method == "activation_density":
        pruner_step = _activation_density(config, agent, obs_dim, record)
    elif pruning.method != DENSE and pruning.when == "init":
        batches = random_policy_batches(data.dataset, pruning.score_batches, data.batch_size, config.seed + 1)
        masks, scoring_seconds = prune_at_init(model, config, batches, agent.loss, record, optimizer=optimizer,
                                               board=board, dense_params=dense.params)
        agent.sync_target()
    elif pruning.method != DENSE:
        pruner_step = _early(config, agent, buffer, record)

    record["training_flops"] = 0

    def on_epoch_end(epoch: int, stats: EpochStats) -> bool:
        flops = report(model).effective_flops or 0
        replayed = stats.gradient_steps * stats.batch_size
        record["training_flops"] += flops * (3 * replayed + replayed + stats.env_steps)
        return pruner_step(epoch, stats) if pruner_step is not None else False

    result = train_dqn(agent, data.dataset, buffer, epochs=training.epochs, steps_per_epoch=steps_per_epoch,
                       batch_size=data.batch_size, seed=config.seed, scheduler=scheduler, on_epoch_end=on_epoch_end,
                       evaluate=lambda q: evaluate_greedy(q, data.dataset),
                       on_epoch_record=None if board is None else board.epoch_hook(record))
    record.update(
        finished_fields(record, model, masks, dense, result, scoring_seconds, processes=1),
        final_accuracy=None,
        best_accuracy=None,
        curve=[{"epoch": r.epoch, "test_accuracy": None, "test_metric": r.test_metric, "train_loss": r.train_loss,
                "train_return": r.train_metric, "seconds": r.seconds} for r in result.history],
    )
    return record


def _early(config: Any, agent: DQNAgent, buffer: ReplayBuffer, record: dict[str, Any]):
    """EarlyCroP's pruner (or a fixed epoch) scoring on batches of the replay buffer; a per-epoch step
    that returns whether it pruned."""
    from ..early import EarlyPruner
    from ..experiments.during_training import _score_mode, _unstructured_settings

    pruning = config.pruning
    scoring = ReplayScoringData(buffer, pruning.score_batches, config.data.batch_size, config.seed + 1)
    pruner = EarlyPruner(
        agent.q_network, pruning.method, None if pruning.budget else pruning.sparsity, scoring,
        structured=pruning.structured, budget=pruning.channel_budget(config.data.batch_size),
        optimizer=agent.optimizer, at_epoch=pruning.prune_epoch,
        cap_epoch=None if pruning.prune_epoch else max(2, config.training.epochs // 2), seed=config.seed,
        task=agent.loss, preset=pruning.preset, **_score_mode(pruning), **_unstructured_settings(pruning),
        **pruning.options,
    )
    events: list[dict[str, Any]] = []
    record["prune_events"] = events

    def step(epoch: int, stats: EpochStats) -> bool:
        event = pruner.step(epoch, optimizer=agent.optimizer)
        if event is None:
            return False
        events.append(event.as_dict())
        record["scoring_seconds"] = record.get("scoring_seconds", 0.0) + event.seconds
        if not pruning.structured:
            record["collapsed"] = pruner.result.info["collapsed"]
            record["mask_sparsity"] = pruner.result.sparsity()
        if pruning.budget is not None:
            record["budget_reached"] = pruner.result.info["budget"]
        return True

    return step


def _activation_density(config: Any, agent: DQNAgent, obs_dim: int, record: dict[str, Any]):
    """Activation-density resizing, counting the ReLU outputs of the replayed batches (acting and the
    evaluation run in eval mode and are not counted); a per-epoch step that returns whether it resized.
    An epoch without gradient steps (all of it before ``learning_starts``) has nothing measured and is not
    counted among the ``prune_every`` epochs."""
    from ..activation_density import ActivationDensityPruner, run_settings

    example = torch.zeros(1, obs_dim)
    pruner = ActivationDensityPruner(agent.q_network, example, optimizer=agent.optimizer,
                                     prune_every=config.pruning.prune_every,
                                     **run_settings(config.pruning.options, config.training.epochs))
    events: list[dict[str, Any]] = []
    record["prune_events"] = events

    def step(epoch: int, stats: EpochStats) -> bool:
        if pruner.stopped or not stats.gradient_steps:
            return False
        event = pruner.epoch_end(epoch, optimizer=agent.optimizer)
        if event is None:
            return False
        events.append(event.as_dict())
        return True

    return step
