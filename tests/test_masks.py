"""Masks: what is prunable, pruned weights stay exactly zero through training, persistence, stats."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune.masking import applied_masks
from earlyprune.prunable import prunable_parameters

from conftest import SmallCNN, TinyResNet, batch_for, mlp

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def train_steps(model, optimizer, steps, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn((8, *shape), generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def assert_pruned_zero(model, masks):
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert bool((params[name][mask] != 0).any()), f"{name}: kept weights should train"


def test_prunable_parameters_default_and_exclusions():
    model = SmallCNN()
    names = list(prunable_parameters(model))
    assert names == ["features.0.weight", "features.3.weight", "classifier.weight"]
    assert list(prunable_parameters(model, exclude=["classifier"])) == ["features.0.weight", "features.3.weight"]
    assert list(prunable_parameters(model, exclude=[nn.Linear])) == ["features.0.weight", "features.3.weight"]
    assert list(prunable_parameters(model, exclude=["features.0.weight"])) == ["features.3.weight", "classifier.weight"]


def test_embedding_and_norms_are_not_prunable_and_tied_weights_appear_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.norm = nn.LayerNorm(6)
            self.proj = nn.Linear(6, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out2 = self.out  # the same layer used twice

        def forward(self, x):
            return self.out2(self.proj(self.norm(self.embed(x))).mean(1))

    assert list(prunable_parameters(Tied())) == ["proj.weight", "out.weight"]

    class TiedToEmbedding(nn.Module):  # a language model's head sharing the input embedding
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.mid = nn.Linear(6, 6)
            self.head = nn.Linear(6, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x):
            return self.head(self.mid(self.embed(x)))

    assert list(prunable_parameters(TiedToEmbedding())) == ["mid.weight"]


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_for_50_steps(opt_name):
    torch.manual_seed(0)
    model = SmallCNN()
    masks = ep.prune(model, "random", 0.8)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    train_steps(model, optimizer, 50, SmallCNN.input_shape)
    assert_pruned_zero(model, masks)


@pytest.mark.parametrize("opt_name", ["sgd_momentum_wd", "adam", "adamw"])
def test_pruning_mid_training_with_optimizer_keeps_zeros(opt_name):
    """Momentum built before the prune would move pruned weights unless the optimizer is attached."""
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    train_steps(model, optimizer, 5, SmallCNN.input_shape)
    masks = ep.prune(model, "magnitude", 0.7, optimizer=optimizer)
    train_steps(model, optimizer, 20, SmallCNN.input_shape, seed=1)
    assert_pruned_zero(model, masks)


def test_without_attaching_mid_training_momentum_would_move_pruned_weights():
    """The reason attach() exists: this test fails if gradient masking alone were enough."""
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    train_steps(model, optimizer, 5, SmallCNN.input_shape)
    masks = ep.prune(model, "magnitude", 0.7)  # no optimizer given
    train_steps(model, optimizer, 1, SmallCNN.input_shape, seed=1)
    params = dict(model.named_parameters())
    assert any(bool((params[n][~m] != 0).any()) for n, m in masks.items())


def test_state_dict_keys_unchanged_and_loads_strict_into_unpruned_model():
    torch.manual_seed(0)
    model = TinyResNet()
    keys_before = list(model.state_dict())
    ep.prune(model, "snip", 0.9, data=batch_for(TinyResNet.input_shape))
    state = model.state_dict()
    assert list(state) == keys_before
    fresh = TinyResNet()
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(2, *TinyResNet.input_shape)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))


def test_masks_save_load_round_trip_and_reapply(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    masks = ep.prune(model, "magnitude", 0.5)
    path = tmp_path / "sub" / "masks.pt"
    masks.save(path)
    loaded = ep.Masks.load(path)
    assert list(loaded) == list(masks)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)
    assert loaded.info["method"] == "magnitude" and loaded.sparsity() == masks.sparsity()
    other = SmallCNN()
    loaded.apply(other)
    assert_zero = dict(other.named_parameters())
    assert all(torch.all(assert_zero[n][~m] == 0) for n, m in loaded.items())
    again = ep.Masks.load(masks.state_dict())
    assert all(torch.equal(again[n], masks[n]) for n in masks)


def test_masks_load_refuses_malicious_and_corrupt_files(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "earlyprune.masks/1", "masks": {}, "x": Evil()}))
    with pytest.raises(ep.PruningError, match="cannot read masks"):
        ep.Masks.load(evil)
    assert not marker.exists()

    corrupt = tmp_path / "corrupt.pt"
    good = tmp_path / "good.pt"
    ep.Masks({"w": torch.ones(3, dtype=torch.bool)}).save(good)
    corrupt.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ep.PruningError, match="cannot read masks"):
        ep.Masks.load(corrupt)
    wrong = tmp_path / "wrong.pt"
    torch.save({"something": torch.zeros(2)}, wrong)
    with pytest.raises(ep.PruningError, match="not an earlyprune masks file"):
        ep.Masks.load(wrong)


def test_apply_rejects_masks_of_another_architecture():
    masks = ep.Masks.ones(SmallCNN())
    with pytest.raises(ep.PruningError, match="does not have"):
        masks.apply(TinyResNet())
    bad = ep.Masks({"features.0.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ep.PruningError, match="shapes do not match"):
        bad.apply(SmallCNN())


def test_stats_are_exact():
    model = mlp((10, 5, 2))
    m0 = torch.ones(5, 10, dtype=torch.bool)
    m0[:, :3] = False  # 15 pruned
    m1 = torch.ones(2, 5, dtype=torch.bool)
    m1[0, 0] = False  # 1 pruned
    masks = ep.Masks({"0.weight": m0, "2.weight": m1})
    assert masks.total() == 60 and masks.kept() == 44
    assert masks.sparsity() == pytest.approx(16 / 60)
    assert masks.layer_sparsity() == {"0.weight": pytest.approx(0.3), "2.weight": pytest.approx(0.1)}
    assert masks.collapsed() == []
    binding = masks.apply(model)
    assert applied_masks(model) is masks
    binding.remove()
    assert applied_masks(model) is None


def test_masks_work_on_a_model_whose_forward_takes_a_dict():
    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(3, 8)
            self.head = nn.Linear(8, 4)

        def forward(self, inputs):
            return self.head(torch.relu(self.a(inputs["image"]) + self.b(inputs["meta"])))

    torch.manual_seed(0)
    model = DictModel()
    x = {"image": torch.randn(12, 4), "meta": torch.randn(12, 3)}
    y = torch.arange(12) % 4
    for method in ["snip", "grasp", "crop", "prospr", "synflow"]:
        masks = ep.prune(model, method, 0.5, data=[(x, y)])
        assert masks.kept() == round(0.5 * masks.total())


def test_float64_model_is_followed():
    torch.manual_seed(0)
    model = mlp((6, 5, 3)).double()
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.arange(9) % 3
    for method in ["snip", "grasp", "prospr", "crop", "synflow"]:
        scores = ep.score(model, method, (x, y))
        assert all(s.dtype == torch.float64 for s in scores.values())
