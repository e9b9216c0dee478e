"""Reinforcement learning: DQN on gymnasium environments with vector observations and discrete actions
(CartPole-v1), pruned like any other model, the criteria scoring the Q-network on batches of transitions
with the TD loss. gymnasium is optional (``pip install earlyprune[rl]``) and imported only when an
environment is made.

One job per module:

* :mod:`.env`: making an environment (``"cartpole"`` is CartPole-v1), the error without gymnasium;
* :mod:`.buffer`: the replay buffer and the layout of a batch of transitions;
* :mod:`.td`: DQN's TD loss as a task (:class:`~earlyprune.tasks.TransitionTask`), what GraSP's
  temperature and SynFlow do for a Q-network;
* :mod:`.exploration`: the epsilon-greedy schedule;
* :mod:`.agent`: the agent (Q-network, target network, one gradient step) and its hyperparameters;
* :mod:`.loop`: the training loop by environment steps, an epoch being ``steps_per_epoch`` steps;
* :mod:`.evaluation`: the greedy policy's mean return over fixed seeds;
* :mod:`.scoring`: the transitions pruning scores on (a random policy at initialisation, the replay
  buffer during training);
* :mod:`.experiment`: one ``earlyprune run`` on an environment, its record.

Pruning a Q-network in your own code::

    from earlyprune import models, prune
    from earlyprune.rl import DQNLoss, frozen_copy, random_policy_batches

    q = models.create("dqn-mlp")
    loss = DQNLoss(frozen_copy(q))                      # target network: a copy of the Q-network
    batches = random_policy_batches("cartpole", 1, 64, seed=1)
    masks = prune(q, "snip", 0.9, data=batches, task=loss)
"""

from .agent import DQNAgent, DQNConfig, frozen_copy
from .buffer import FIELDS, ReplayBuffer
from .env import ENVIRONMENTS, GymnasiumMissingError, make_env
from .evaluation import EVAL_SEEDS, evaluate_greedy
from .exploration import LinearEpsilon
from .loop import EpochStats, train_dqn
from .scoring import ReplayScoringData, random_policy_batches
from .td import DQNLoss

__all__ = [
    "DQNAgent", "DQNConfig", "frozen_copy", "ReplayBuffer", "FIELDS", "ENVIRONMENTS", "GymnasiumMissingError",
    "make_env", "EVAL_SEEDS", "evaluate_greedy", "LinearEpsilon", "EpochStats", "train_dqn",
    "ReplayScoringData", "random_policy_batches", "DQNLoss",
]
