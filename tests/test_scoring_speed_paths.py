"""Every faster scoring path against the plain route it replaces: same scores (float tolerance), same masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune.criteria._autograd import (
    gradient_and_hessian_gradient,
    hessian_gradient_product,
    loss_gradient,
)
from earlyprune.loss import batch_loss, default_loss
from earlyprune.selection import kth_smallest, select, top_by_position
from earlyprune.structured.gates import channel_gates
from earlyprune.structured.groups import channel_groups


def conv_net(seed: int = 0) -> nn.Module:
    """A tiny conv net with BatchNorm (train-mode batch statistics make the Hessian non-trivial)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).double()


def batches(count: int, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g))
            for _ in range(count)]


def weights(model: nn.Module) -> dict:
    return {n: p for n, p in model.named_parameters() if p.dim() > 1}


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_reused_graph_gives_the_plain_two_pass_gradient_and_hessian_product(count, masked):
    model = conv_net()
    model.train()
    params = weights(model)
    data = batches(count)
    masks = None
    if masked:
        gen = torch.Generator().manual_seed(3)
        masks = {n: (torch.rand(p.shape, generator=gen) > 0.4).double() for n, p in params.items()}
    plain_g = loss_gradient(model, params, data, default_loss, 200.0, masks=masks)
    plain_hg = hessian_gradient_product(model, params, data, plain_g, default_loss, 200.0)
    fast_g, fast_hg = gradient_and_hessian_gradient(model, params, data, default_loss, 200.0, masks=masks)
    for n in params:
        torch.testing.assert_close(fast_g[n], plain_g[n], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(fast_hg[n], plain_hg[n], rtol=1e-9, atol=1e-14)
        assert plain_hg[n].abs().sum() > 0  # a real comparison, not of zeros


@pytest.mark.parametrize("method", ["grasp", "crop"])
def test_grasp_and_crop_masks_equal_those_of_the_plain_route(method):
    model = conv_net()
    data = batches(2)
    fast = ep.score(model, method, data)
    params = weights(model)
    model.train()
    temperature = 200.0 if method == "grasp" else 1.0
    g = loss_gradient(model, params, data, default_loss, temperature)
    hg = hessian_gradient_product(model, params, data, g, default_loss, temperature)
    plain = {n: p.detach() * hg[n] for n, p in params.items()}
    if method == "crop":
        plain = {n: v.abs() for n, v in plain.items()}
    fast = {n: fast[n] for n in params}
    for n in params:
        torch.testing.assert_close(fast[n], plain[n], rtol=1e-9, atol=1e-14)
    fast_masks, _ = select(fast, 0.6)
    plain_masks, _ = select(plain, 0.6)
    assert all(torch.equal(fast_masks[n], plain_masks[n]) for n in params)


def plain_structured_crop(model, groups, data):
    """The two-pass structured CroP: g without a graph first, then per batch ∂(g·∇_w L_b)/∂c."""
    named = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    w = list(named.values())
    target = [torch.zeros_like(p) for p in w]
    for batch in data:
        for acc, grad in zip(target, torch.autograd.grad(batch_loss(model, batch, default_loss), w)):
            acc += grad
    totals = {g.index: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    with channel_gates(model, groups) as gates:
        gate_list = [gates[g.index] for g in groups]
        for batch in data:
            flow = torch.autograd.grad(batch_loss(model, batch, default_loss), w, create_graph=True)
            z = sum((f * t).sum() for f, t in zip(flow, target))
            for g, grad in zip(groups, torch.autograd.grad(z, gate_list, allow_unused=True)):
                if grad is not None:
                    totals[g.index] += grad.detach().double()
    return {k: v.abs() for k, v in totals.items()}


def test_structured_crop_reusing_the_graph_equals_the_two_pass_route():
    from earlyprune.criteria.compute import compute_channel_importance

    model = conv_net()
    data = batches(3)
    groups = channel_groups(model, data[0][0][:1])
    fast = compute_channel_importance(model, "crop", groups, data)
    model.train()
    plain = plain_structured_crop(model, groups, data)
    assert fast.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-9, atol=1e-14)
        assert plain[k].sum() > 0


def stable_sort_top(values: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.zeros_like(values, dtype=torch.bool)
    keep[torch.sort(values, descending=True, stable=True).indices[:count]] = True
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_top_by_position_is_the_stable_sort_selection_with_ties_and_minus_infinity(seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 5, (200,), generator=gen).double()  # many ties
    values[torch.rand(200, generator=gen) < 0.2] = -math.inf
    for count in [0, 1, 7, 50, 120, 170, 199, 200, 250]:
        assert torch.equal(top_by_position(values, count), stable_sort_top(values, count)), count


def large_values(kind: str, size: int, gen: torch.Generator) -> torch.Tensor:
    """Inputs large enough for kth_smallest's sampled route, of the shapes selection meets."""
    if kind == "ties":
        return torch.randint(0, 5, (size,), generator=gen).double()
    if kind == "sorted":
        return torch.sort(torch.rand(size, generator=gen)).values
    if kind == "heavy tail":  # SynFlow's scores span many orders of magnitude
        return torch.rand(size, generator=gen) ** 20
    if kind == "mostly zero":  # pruned weights score 0
        return torch.where(torch.rand(size, generator=gen) < 0.9, 0.0, torch.rand(size, generator=gen))
    values = torch.randn(size, generator=gen, dtype=torch.float64)  # select()'s pruned entries are -inf
    values[torch.rand(size, generator=gen) < (0.9 if kind == "mostly minus infinity" else 0.3)] = -math.inf
    return values


@pytest.mark.parametrize("kind", ["ties", "sorted", "heavy tail", "mostly zero", "minus infinity",
                                  "mostly minus infinity"])
def test_kth_smallest_is_kthvalue_exactly(kind):
    gen = torch.Generator().manual_seed(len(kind))
    for size in [60_000, 200_001]:
        values = large_values(kind, size, gen)
        for k in [1, 2, size // 3, size // 2, size - 1, size, int(torch.randint(1, size + 1, (1,), generator=gen))]:
            expected = torch.kthvalue(values, k).values
            found = kth_smallest(values, k)
            assert found.dtype == values.dtype and torch.equal(found, expected), (size, k)


def test_kth_smallest_searches_everything_where_the_sample_misleads():
    size = 100_000
    values = torch.rand(size, generator=torch.Generator().manual_seed(0))
    stride = size // 4_096  # the evenly spaced sample sees only the value 0.5: the bracket [0.5, 0.5]
    values[::stride] = 0.5
    for k in [10, size // 2, size - 10]:
        assert torch.equal(kth_smallest(values, k), torch.kthvalue(values, k).values), k


def plain_synflow_rounds(model, sparsity, iterations, **settings):
    """The plain route: one compute_importance call and one select per round."""
    from earlyprune.criteria import compute_importance
    from earlyprune.prunable import prunable_parameters
    from earlyprune.schedules import schedule_targets
    from earlyprune.selection import reshape_like

    options = {k: settings.pop(k) for k in ("double",) if k in settings}
    params = prunable_parameters(model)
    current = None
    for index, target in enumerate(schedule_targets(sparsity, None, iterations)):
        importance = compute_importance(model, "synflow", params, None, masks=current, seed=index, **options)
        flat, _ = select(importance, target, current=current, **settings)
        current = reshape_like(flat, params)
        with torch.no_grad():
            for name, param in params.items():
                param.mul_(current[name])
    return current


def synflow_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    with torch.no_grad():  # BatchNorm statistics away from their defaults, so their abs() matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    model.input_shape = (2, 5, 5)
    return model


@pytest.mark.parametrize("settings", [{}, {"scope": "layer"}, {"rule": "official"}, {"double": True},
                                      {"on_collapse": "keep_min"}])
def test_synflow_rounds_in_place_give_the_plain_routes_masks(settings):
    fast_model, plain_model = synflow_net(), synflow_net()
    before = {k: v.clone() for k, v in fast_model.state_dict().items()}
    masks = ep.prune(fast_model, "synflow", 0.95, iterations=12, **settings)
    plain = plain_synflow_rounds(plain_model, 0.95, 12, **settings)
    assert masks.keys() == plain.keys()
    for name in plain:
        assert torch.equal(masks[name].bool(), plain[name].bool()), name
    # the model is back as it was, with only the pruned entries zeroed: signs, dtype, BatchNorm buffers
    after = fast_model.state_dict()
    for key, value in before.items():
        expected = value * masks[key].to(value.dtype) if key in masks else value
        assert after[key].dtype == value.dtype
        assert torch.equal(after[key], expected), key
    assert all(p.requires_grad for p in fast_model.parameters())
    assert all(p.grad is None for p in fast_model.parameters())


def test_synflow_rounds_continue_from_applied_masks_like_the_plain_route():
    fast_model, plain_model = synflow_net(1), synflow_net(1)
    for model in (fast_model, plain_model):
        ep.prune(model, "magnitude", 0.5)
    masks = ep.prune(fast_model, "synflow", 0.9, iterations=5)
    from earlyprune.criteria import compute_importance
    from earlyprune.masking import applied_masks
    from earlyprune.prunable import prunable_parameters
    from earlyprune.schedules import schedule_targets
    from earlyprune.selection import reshape_like

    params = prunable_parameters(plain_model)
    current = {n: m for n, m in applied_masks(plain_model).items()}
    for index, target in enumerate(schedule_targets(0.9, None, 5)):
        importance = compute_importance(plain_model, "synflow", params, None, masks=current, seed=index)
        flat, _ = select(importance, target, current=current)
        current = reshape_like(flat, params)
    for name in current:
        assert torch.equal(masks[name].bool(), current[name].bool()), name
    assert not any(bool((masks[n].bool() & ~applied_masks(plain_model)[n].bool()).any()) for n in current)


def test_synflow_rounds_break_ties_by_position_like_the_plain_route():
    fast_model, plain_model = synflow_net(2), synflow_net(2)
    for model in (fast_model, plain_model):  # constant weights: whole layers tie at every threshold
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)
    masks = ep.prune(fast_model, "synflow", 0.9, iterations=6, on_collapse="allow")
    plain = plain_synflow_rounds(plain_model, 0.9, 6, on_collapse="allow")
    for name in plain:
        assert torch.equal(masks[name].bool(), plain[name].bool()), name


def test_synflow_rounds_on_a_lenet5_give_the_plain_routes_masks_with_the_callers_threads():
    """Large enough for the sampled selection and NumPy compaction; the rounds run on one intra-op
    thread, the plain route on the caller's two, and the masks are still the same."""
    from earlyprune import models

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        fast_model = models.create("lenet5")
        plain_model = models.create("lenet5")
        plain_model.load_state_dict(fast_model.state_dict())
        masks = ep.prune(fast_model, "synflow", 0.98, iterations=15)
        assert torch.get_num_threads() == 2  # put back after the rounds
        plain = plain_synflow_rounds(plain_model, 0.98, 15)
    finally:
        torch.set_num_threads(threads)
    for name in plain:
        assert torch.equal(masks[name].bool(), plain[name].bool()), name
    assert sum(int(m.sum()) for m in masks.values()) == round(0.02 * sum(m.numel() for m in masks.values()))
