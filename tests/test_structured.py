"""Structured pruning: surgery equals gating, optimizer state carried, groups, gate-gradient importance."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune import models
from earlyprune.structured import build_groups, channel_gates, channel_importance, select_channels, shrink

from conftest import mlp


def setup(name, width=0.25, seed=0):
    torch.manual_seed(seed)
    model = models.create(name, width=width)
    x = torch.randn(16, *model.input_shape)
    y = torch.arange(16) % 10
    return model, x, y


def random_keep(plan, fraction=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for group in plan.groups:
        n = max(1, round(fraction * group.size))
        keep[group.index] = torch.randperm(group.size, generator=g)[:n].sort().values
    return keep


def gate_values(plan, keep):
    values = {}
    for group in plan.groups:
        v = torch.zeros(group.size)
        v[keep[group.index]] = 1.0
        values[group.index] = v
    return values


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "lenet5", "lenet300"])
def test_shrunk_model_equals_gated_large_model(name):
    model, x, _ = setup(name)
    model.eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    large = copy.deepcopy(model)
    plan = build_groups(model, x[:1])
    keep = random_keep(plan)
    large_plan = build_groups(large, x[:1])
    with torch.no_grad(), channel_gates(large, large_plan.groups, gate_values(large_plan, keep), requires_grad=False):
        expected = large(x)
    result = shrink(model, plan, keep)
    assert result.params_after < result.params_before
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    # Nothing is left behind: no hooks on any module.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_optimizer_step_after_surgery_equals_the_masked_step(name, opt_name):
    model, x, y = setup(name)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    for _ in range(3):  # non-trivial momentum / moments
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    twin = copy.deepcopy(model)
    twin_opt = OPTIMIZERS[opt_name](twin.parameters())
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict shares tensors

    plan = build_groups(model, x[:1])
    keep = random_keep(plan, 0.6, seed=1)
    result = shrink(model, plan, keep, optimizer=optimizer)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()

    twin_plan = build_groups(twin, x[:1])
    with channel_gates(twin, twin_plan.groups, gate_values(twin_plan, keep), requires_grad=False):
        twin_opt.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        twin_opt.step()
    twin_params = dict(twin.named_parameters())
    for pname, p in model.named_parameters():
        expected = twin_params[pname].detach()
        for dim, index in result.kept_indices.get(pname, {}).items():
            expected = expected.index_select(dim, index)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6, msg=lambda m: f"{pname}: {m}")


def test_lr_scheduler_goes_on_after_surgery():
    model, x, y = setup("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    plan = build_groups(model, x[:1])
    shrink(model, plan, random_keep(plan), optimizer=optimizer)
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}  # the optimizer holds the new parameters
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert all(p in optimizer.state for p in model.parameters())


def test_state_dict_of_shrunk_model_saves_and_loads(tmp_path):
    model, x, _ = setup("resnet20")
    plan = build_groups(model, x[:1])
    keep = random_keep(plan)
    shrink(model, plan, keep)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other, _, _ = setup("resnet20", seed=5)
    other_plan = build_groups(other, x[:1])
    shrink(other, other_plan, keep)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    model.eval(), other.eval()
    torch.testing.assert_close(other(x), model(x))


def test_groups_tie_residual_channels_and_leave_the_classifier():
    model, x, _ = setup("resnet20")
    plan = build_groups(model, x[:1])
    stage1 = next(g for g in plan.groups if "conv1" in g.producers)
    assert {"layers.0.0.conv2", "layers.0.1.conv2", "layers.0.2.conv2"} <= set(stage1.producers)
    assert all("fc" not in g.producers for g in plan.groups)
    scores = {g.index: torch.rand(g.size) for g in plan.groups}
    keep = select_channels(scores, plan.groups, 0.99)
    assert all(len(k) >= 1 for k in keep.values())
    total = sum(g.size for g in plan.groups)
    keep = select_channels(scores, plan.groups, 0.5)
    assert sum(len(k) for k in keep.values()) == round(0.5 * total)


def test_channel_multiple_rounds_widths_up_with_the_next_best_channels():
    model, x, _ = setup("resnet20", width=1.0)
    plan = build_groups(model, x[:1])
    scores = {g.index: torch.rand(g.size, generator=torch.Generator().manual_seed(g.index)) for g in plan.groups}
    plain = select_channels(scores, plan.groups, 0.6)
    rounded = select_channels(scores, plan.groups, 0.6, multiple=8)
    for g in plan.groups:
        n = len(rounded[g.index])
        assert n % 8 == 0 or n == g.size
        assert set(plain[g.index].tolist()) <= set(rounded[g.index].tolist())  # only additions
        assert n - len(plain[g.index]) < 8
        best = torch.sort(scores[g.index], descending=True, stable=True).indices[:n]
        assert set(rounded[g.index].tolist()) == set(best.tolist())  # a group keeps its best channels


def test_structured_snip_equals_activation_times_its_gradient():
    torch.manual_seed(0)
    model = mlp((6, 5, 4, 3)).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.arange(10) % 3
    plan = build_groups(model, x[:1])
    scores = channel_importance(model, "snip", plan.groups, [(x, y)])
    # Independent route: dL/dc_j at c = 1 is sum over the batch of h_j * dL/dh_j, h the layer's output.
    h1 = model[0](x)
    h1.retain_grad()
    h2 = model[2](torch.relu(h1))
    h2.retain_grad()
    F.cross_entropy(model[4](torch.relu(h2)), y).backward()
    expected = {"0": (h1 * h1.grad).sum(0).abs(), "2": (h2 * h2.grad).sum(0).abs()}
    for g in plan.groups:
        torch.testing.assert_close(scores[g.index], expected[g.producers[0]].detach())


def test_structured_crop_matches_finite_differences_of_z():
    torch.manual_seed(0)
    model = mlp((5, 4, 3)).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.arange(8) % 3
    plan = build_groups(model, x[:1])
    (group,) = plan.groups
    scores = channel_importance(model, "crop", plan.groups, [(x, y)])
    params = list(model.parameters())
    g = [t.detach() for t in torch.autograd.grad(F.cross_entropy(model(x), y), params)]

    def z(gate):
        with channel_gates(model, plan.groups, {group.index: gate}, requires_grad=False):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        return sum((a * b).sum() for a, b in zip(grads, g)).item()

    eps = 1e-6
    for j in range(group.size):
        plus, minus = torch.ones(group.size, dtype=torch.float64), torch.ones(group.size, dtype=torch.float64)
        plus[j] += eps
        minus[j] -= eps
        fd = (z(plus) - z(minus)) / (2 * eps)
        assert scores[group.index][j].item() == pytest.approx(abs(fd), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "crop"])
def test_structured_scoring_leaves_the_model_untouched(method):
    model, x, y = setup("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    plan = build_groups(model, x[:1])
    channel_importance(model, method, plan.groups, [(x, y)])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_unstructured_masks_are_sliced_with_the_channels():
    model, x, y = setup("vgg11")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masks = ep.prune(model, "magnitude", 0.8, optimizer=optimizer)
    ep.prune(model, "random", 0.5, data=(x, y), structured=True, optimizer=optimizer)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert mask.shape == params[name].shape
        assert torch.all(params[name][~mask] == 0)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(torch.all(params[n][~m] == 0) for n, m in masks.items())  # still zero after a step


def test_structured_bad_input():
    model, x, y = setup("lenet300")
    with pytest.raises(ep.PruningError, match="no structured form"):
        ep.prune(model, "grasp", 0.5, data=(x, y), structured=True)
    with pytest.raises(ep.PruningError, match="sparsity"):
        ep.prune(model, "snip", 1.0, data=(x, y), structured=True)
