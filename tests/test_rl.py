"""Reinforcement learning (earlyprune.rl): the replay buffer, DQN's TD loss by hand, the deterministic
evaluation over fixed seeds, every criterion on a Q-network scored on transitions, structured pruning of
the Q-network, and `earlyprune run` on CartPole."""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

gym = pytest.importorskip("gymnasium")

import earlyprune as ep  # noqa: E402
from earlyprune import models  # noqa: E402
from earlyprune.experiments.config import RunConfig  # noqa: E402
from earlyprune.rl import (  # noqa: E402
    DQNAgent, DQNConfig, DQNLoss, GymnasiumMissingError, ReplayBuffer, ReplayScoringData, evaluate_greedy,
    frozen_copy, make_env, random_policy_batches,
)
from earlyprune.rl.experiment import run_rl_experiment  # noqa: E402
from earlyprune.train import TrainConfig, make_optimizer  # noqa: E402

#: a DQN that learns within a few hundred steps (the defaults wait 1,000 steps before learning)
QUICK = DQNConfig(learning_starts=64, train_every=32, gradient_steps=4, buffer_size=1000)


def q_network(width: float = 0.125) -> nn.Module:
    torch.manual_seed(0)
    return models.create("dqn-mlp", width=width)  # 32-32 hidden units


def transitions(seed: int = 1, n: int = 64):
    return random_policy_batches("cartpole", 1, n, seed)


# --- the replay buffer ------------------------------------------------------------------------------------

def test_replay_buffer_keeps_the_last_capacity_transitions_and_samples_only_those():
    buffer = ReplayBuffer(3, obs_dim=2)
    for i in range(5):  # 0 and 1 are overwritten by 3 and 4
        buffer.add([i, -i], i % 2, float(i), [i + 1, -i - 1], terminated=(i == 4))
    assert len(buffer) == 3 and buffer.position == 2
    assert sorted(buffer.reward.tolist()) == [2.0, 3.0, 4.0]
    batch, rewards = buffer.sample(200, torch.Generator().manual_seed(0))
    assert set(rewards.tolist()) == {2.0, 3.0, 4.0}  # every stored one drawn, nothing else
    assert torch.equal(rewards, batch["reward"]) and batch["action"].dtype == torch.int64
    # each row is one transition: next_obs = obs + (1, -1), action = reward mod 2, terminal only for 4
    assert torch.equal(batch["next_obs"], batch["obs"] + torch.tensor([1.0, -1.0]))
    assert torch.equal(batch["action"], batch["reward"].long() % 2)
    assert torch.equal(batch["terminated"], (batch["reward"] == 4).float())
    again, _ = buffer.sample(200, torch.Generator().manual_seed(0))
    assert torch.equal(again["obs"], batch["obs"])  # reproducible from the generator
    with pytest.raises(ep.PruningError, match="empty"):
        ReplayBuffer(4, 2).sample(1, torch.Generator())
    with pytest.raises(ep.PruningError, match="capacity"):
        ReplayBuffer(0, 2)


def test_replay_scoring_data_gives_the_same_batches_on_every_pass():
    buffer = ReplayBuffer(100, 4)
    for i in range(100):
        buffer.add(np.full(4, i), i % 2, 1.0, np.full(4, i + 1), False)
    data = ReplayScoringData(buffer, num_batches=2, batch_size=8, seed=3)
    first, second = list(data), list(data)
    assert len(first) == 2 and all(torch.equal(a[0]["obs"], b[0]["obs"]) for a, b in zip(first, second))
    assert not torch.equal(first[0][0]["obs"], first[1][0]["obs"])


# --- the TD loss by hand ----------------------------------------------------------------------------------

def linear_q(weight, bias) -> nn.Module:
    q = nn.Linear(2, 2)
    with torch.no_grad():
        q.weight.copy_(torch.tensor(weight))
        q.bias.copy_(torch.tensor(bias))
    return q


def test_td_loss_by_hand_on_two_transitions():
    online = linear_q([[1.0, 0.0], [0.0, 2.0]], [0.0, 0.5])
    target = linear_q([[0.5, 0.5], [1.0, -1.0]], [0.0, 0.0])
    batch = {"obs": torch.tensor([[1.0, 2.0], [3.0, -1.0]]), "action": torch.tensor([1, 0]),
             "reward": torch.tensor([1.0, 0.5]), "next_obs": torch.tensor([[2.0, 0.0], [1.0, 1.0]]),
             "terminated": torch.tensor([0.0, 1.0])}
    # Q(s1) = (1, 4.5), action 1 -> 4.5; Q(s2) = (3, -1.5), action 0 -> 3.
    # target net: Q_t(s1') = (1, 2), max 2 -> y1 = 1 + 0.9 * 2 = 2.8; s2 terminal -> y2 = 0.5.
    # errors: 4.5 - 2.8 = 1.7 (Huber linear part: 1.7 - 0.5 = 1.2), 3 - 0.5 = 2.5 (-> 2.0); mean 1.6.
    loss = DQNLoss(target, gamma=0.9)
    assert torch.allclose(loss.td_target(batch), torch.tensor([2.8, 0.5]))
    assert loss.batch_loss(online, (batch, batch["reward"])).item() == pytest.approx(1.6)
    assert DQNLoss(target, gamma=0.9, loss="mse").batch_loss(online, (batch, batch["reward"])).item() == \
        pytest.approx((1.7**2 + 2.5**2) / 2)
    # GraSP's temperature divides the error: at T = 10 both errors are in Huber's quadratic part
    assert loss.batch_loss(online, (batch, batch["reward"]), temperature=10.0).item() == \
        pytest.approx((0.17**2 + 0.25**2) / 2 / 2)
    # the loss's gradient reaches only the online network (the target is a constant)
    loss.batch_loss(online, (batch, batch["reward"])).backward()
    assert online.weight.grad.abs().sum() > 0 and target.weight.grad is None


def test_td_loss_refuses_what_is_not_a_batch_of_transitions():
    loss = DQNLoss(q_network())
    with pytest.raises(ep.PruningError, match="transitions"):
        loss.batch_loss(q_network(), (torch.randn(4, 4), torch.zeros(4)))
    (batch, rewards), = transitions(n=4)
    with pytest.raises(ep.PruningError, match="actions must be integers"):
        loss.batch_loss(q_network(), ({**batch, "action": batch["action"] + 2}, rewards))
    with pytest.raises(ep.PruningError, match="gamma"):
        DQNLoss(q_network(), gamma=1.5)


# --- evaluation --------------------------------------------------------------------------------------------

def test_greedy_evaluation_is_deterministic_and_equals_the_episodes_played_by_hand():
    pushes_left = nn.Sequential(nn.Linear(4, 2))  # Q(s, 0) = 1 > Q(s, 1) = 0 everywhere
    with torch.no_grad():
        pushes_left[0].weight.zero_()
        pushes_left[0].bias.copy_(torch.tensor([1.0, 0.0]))
    seeds = [3, 7, 11]
    by_hand = []
    for seed in seeds:
        env = gym.make("CartPole-v1")
        env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(0)
            steps += reward
            done = terminated or truncated
        by_hand.append(steps)
    result = evaluate_greedy(pushes_left, "cartpole", seeds)
    assert result["return"] == pytest.approx(np.mean(by_hand)) and result["episodes"] == 3
    assert result["return_min"] == min(by_hand)
    q = q_network()
    assert evaluate_greedy(q, "cartpole") == evaluate_greedy(q, "cartpole")


def test_missing_gymnasium_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now fails
    with pytest.raises(GymnasiumMissingError, match=r"pip install earlyprune\[rl\]"):
        make_env("cartpole")


# --- pruning the Q-network ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"])
def test_every_criterion_scores_the_q_network_on_transitions(method):
    q = q_network()
    scores = ep.score(q, method, transitions(), task=DQNLoss(frozen_copy(q)))
    assert set(scores) == {"fc1.weight", "fc2.weight", "head.weight"}
    for name, s in scores.items():
        assert torch.isfinite(s).all(), name
        assert s.abs().sum() > 0, name


def test_data_based_scores_are_those_of_the_td_loss():
    """SNIP's score of a Q-network is |θ ⊙ ∂L_TD/∂θ|, computed here by autograd on the TD loss directly."""
    q = q_network()
    loss = DQNLoss(frozen_copy(q))
    batch = transitions()[0]
    scores = ep.score(q, "snip", [batch], task=loss)
    q.zero_grad()
    loss.batch_loss(q, batch).backward()
    for name, param in q.named_parameters():
        if name in scores:
            assert torch.allclose(scores[name], (param * param.grad).abs().detach(), atol=1e-7)


def test_structured_prune_of_the_q_network_keeps_the_agent_working():
    q = q_network()
    optimizer = make_optimizer(q, TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0))
    agent = DQNAgent(q, optimizer, QUICK)
    batches = transitions()
    ep.prune_channels(q, "crop", 0.5, data=batches, task=agent.loss, optimizer=optimizer)
    # half of the 64 hidden units go, ranked across both layers; one output per action stays
    assert q.fc1.out_features + q.fc2.out_features == 32 and q.head.out_features == 2
    assert q.fc1.out_features < 32 and q.fc2.out_features < 32
    agent.sync_target()  # the target network is rebuilt at the new shapes
    assert agent.target.fc1.out_features == q.fc1.out_features and agent.loss.target_network is agent.target
    before = agent.loss.batch_loss(q, batches[0]).item()
    for _ in range(20):
        agent.learn(batches[0])
    assert agent.loss.batch_loss(q, batches[0]).item() < before
    assert evaluate_greedy(q, "cartpole", [0, 1])["return"] > 0


# --- runs ---------------------------------------------------------------------------------------------------

def tiny_run(**settings):
    values = dict(dataset="cartpole", model="dqn-mlp", width=0.125, epochs=3, steps_per_epoch=100, batch_size=32,
                  optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="constant")
    values.update(settings)
    return run_rl_experiment(RunConfig(**values), threads=1, device="cpu", dqn=QUICK)


def test_a_run_is_deterministic_and_records_the_mean_return():
    first = tiny_run(method="snip", sparsity=0.9)
    assert first["task"] == "reinforcement_learning" and first["metric_name"] == "return"
    assert first["higher_is_better"] is True and first["final_accuracy"] is None
    assert first["final_metric"] == first["final_metrics"]["return"] == first["curve"][-1]["test_metric"]
    assert first["best_metric"] == max(c["test_metric"] for c in first["curve"])
    assert first["achieved_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert first["training_flops"] > 0 and first["env_steps"] == 300
    assert any(c["train_loss"] is not None for c in first["curve"])  # it learned
    second = tiny_run(method="snip", sparsity=0.9)
    assert [c["test_metric"] for c in second["curve"]] == [c["test_metric"] for c in first["curve"]]
    assert [c["train_loss"] for c in second["curve"]] == [c["train_loss"] for c in first["curve"]]


@pytest.mark.parametrize("settings", [
    {"method": "crop", "sparsity": 0.5, "when": "early", "structured": True},
    {"method": "snip", "sparsity": 0.9, "when": "epoch:2"},
    {"method": "activation_density"},
])
def test_pruning_during_training(settings):
    record = tiny_run(**settings)
    assert len(record["prune_events"]) >= 1
    if settings.get("structured") or settings["method"] == "activation_density":
        assert record["params"] < record["dense_params"]  # units removed physically
    else:
        assert record["prune_events"][0]["epoch"] == 2
        assert record["achieved_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert record["final_metric"] > 0


def test_earlyprune_run_on_cartpole_writes_a_record_with_the_return(tmp_path):
    from earlyprune.cli import main

    out = tmp_path / "runs.jsonl"
    code = main(["run", "--dataset", "cartpole", "--model", "dqn-mlp", "--width", "0.125", "--method", "random",
                 "--sparsity", "0.5", "--epochs", "2", "--steps-per-epoch", "150", "--batch-size", "32",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["metric_name"] == "return" and record["task"] == "reinforcement_learning"
    assert 8 <= record["final_metric"] <= 500 and record["steps_per_epoch"] == 150


def test_settings_that_do_not_apply_are_refused():
    with pytest.raises(ep.PruningError, match="train-subset"):
        tiny_run(method="dense", train_subset=10)
    with pytest.raises(ep.PruningError, match="dqn-mlp"):
        tiny_run(method="dense", model="mlp-regressor")
    from earlyprune.experiments.run import run_experiment

    with pytest.raises(ep.PruningError, match="steps-per-epoch"):
        run_experiment(RunConfig(dataset="mnist-sample", steps_per_epoch=10, epochs=1), device="cpu")


def test_dqn_mlp_is_the_zoo_q_network():
    q = models.create("dqn")
    assert sum(p.numel() for p in q.parameters()) == (4 + 1) * 256 + 257 * 256 + 257 * 2
    assert q.task == "reinforcement_learning" and models.spec("dqn-mlp").inputs == "observations"
    assert sum(isinstance(m, nn.ReLU) for m in q.modules()) == 2
    (batch, _), = transitions(n=5)
    assert torch.equal(ep.calling.predict(q, batch), q(batch["obs"]))  # called on a batch's observations
    with pytest.raises(ValueError, match="obs_dim"):
        models.create("dqn-mlp", in_channels=3)


def test_an_rl_run_records_the_energy_from_the_hardware_counter(tmp_path, monkeypatch):
    """The DQN loop reads the energy counters around its training, as the supervised loop does."""
    from earlyprune import energy

    monkeypatch.setattr(energy, "_nvml_reader", lambda: None)
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "max_energy_range_uj").write_text(f"{10**12}\n")
    (domain / "energy_uj").write_text("0\n")
    monkeypatch.setattr(energy, "POWERCAP_ROOT", str(tmp_path))
    reads = []
    original_read = energy.EnergyMeter._read

    def read(self):  # 5 J between consecutive reads
        reads.append(1)
        (domain / "energy_uj").write_text(f"{5_000_000 * len(reads)}\n")
        return original_read(self)

    monkeypatch.setattr(energy.EnergyMeter, "_read", read)
    record = tiny_run(method="dense", epochs=1)
    assert record["energy_source"] == "rapl" and record["energy_joules"] == 5.0


def test_an_rl_prune_at_init_takes_every_pruning_setting_of_the_run():
    """The RL runs pruned with a shorter list of settings than the supervised ones: --ablation and
    --score-batches were silently ignored. They share one prune now."""
    plain = tiny_run(method="snip", sparsity=0.9, epochs=1)
    inverted = tiny_run(method="snip", sparsity=0.9, epochs=1, ablation="invert", on_collapse="allow")
    more_batches = tiny_run(method="snip", sparsity=0.9, epochs=1, score_batches=3)
    assert plain["layer_density"] != inverted["layer_density"]
    assert plain["layer_density"] != more_batches["layer_density"]
