"""A Q-network for reinforcement learning on vector observations: observations (B, obs_dim) float ->
action values (B, num_actions), one per discrete action (``num_classes`` is the number of actions).

Reinforcement-learning batches are mappings of transition tensors (``{"obs", "action", "reward",
"next_obs", "terminated"}``, see :mod:`earlyprune.rl.buffer`); the network declares, through
``earlyprune_inputs`` (:mod:`earlyprune.calling`), that it is called on the observations of such a batch,
so tracing (structured pruning), SynFlow's all-ones input and the FLOPs counter work on transition
batches as on plain observation tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._common import check_positive, check_width, scaled


class QNetworkMLP(nn.Module):
    """``obs_dim - 256 - 256 - num_actions`` with ReLU: the MLP Q-network of the tuned CartPole-v1 DQN of
    RL Baselines3 Zoo (Raffin 2020; ``net_arch=[256, 256]``), the value network of DQN (Mnih et al.,
    Nature 2015) for vector observations. ``width`` scales the hidden layers; ``obs_dim`` defaults to
    CartPole's 4 and ``num_classes`` (the actions) to its 2. Parameters at width 1:
    (obs_dim + 1) * 256 + 257 * 256 + 257 * num_actions.

    Its two ``nn.ReLU`` modules make activation-density pruning apply; its hidden units are the channels
    structured pruning removes (the output layer keeps one unit per action).
    """

    def __init__(self, num_classes: int = 2, width: float = 1.0, obs_dim: int = 4,
                 hidden: tuple[int, int] = (256, 256)):
        super().__init__()
        width = check_width(width)
        check_positive("obs_dim", obs_dim)
        self.input_shape = (obs_dim,)
        first, second = scaled(hidden[0], width), scaled(hidden[1], width)
        self.fc1 = nn.Linear(obs_dim, first)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(first, second)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(second, num_classes)

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.relu2(self.fc2(self.relu1(self.fc1(obs)))))

    def earlyprune_inputs(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """How the library calls the network: on the observations of a transition batch (a mapping with
        ``"obs"``), or on an observation tensor as it is."""
        if isinstance(inputs, Mapping):
            return (inputs["obs"],), {}
        return (inputs,), {}
