"""Structured pruning to a cost budget: met, counted exactly, cheaper than channel-count selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune.errors import PruningError
from earlyprune.metrics import report


def conv_net(seed: int = 0) -> nn.Module:
    """Cheap early channels at high resolution, expensive ones later: count and cost disagree."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    )
    model.input_shape = (3, 8, 8)
    return model


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, 4, (12,), generator=g)


def flops(model: nn.Module) -> int:
    return report(model, input_shape=(3, 8, 8)).flops


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_a_flops_budget_is_met_and_reported_as_counted_on_the_pruned_model(target):
    model = conv_net()
    dense = flops(model)
    result = ep.prune_channels(model, "crop", data=data(), budget={"flops": target})
    reached = flops(model)
    info = result.info["budget"]
    assert reached <= target * dense
    assert info["flops"] == reached and info["estimated"] == pytest.approx(reached)
    # within one channel: the cheapest single channel more would not have fitted... or every channel is kept
    assert reached >= target * dense - max(dense * 0.12, 1)


def test_cost_aware_selection_costs_fewer_flops_at_the_same_channel_fraction():
    plain, aware = conv_net(), conv_net()
    ep.prune_channels(plain, "crop", 0.5, data=data())
    result = ep.prune_channels(aware, "crop", data=data(), budget={"channels": 0.5})
    widths = lambda m: sum(l.out_channels for l in m if isinstance(l, nn.Conv2d))  # noqa: E731
    assert widths(aware) == widths(plain)  # the same number of channels (28 of 56)
    assert flops(aware) < flops(plain)
    assert result.info["budget"]["channels_kept"] == 28


def test_a_params_budget_as_a_count_and_as_a_fraction():
    model = conv_net()
    before = sum(p.numel() for p in model.parameters())
    ep.prune_channels(model, "snip", data=data(), budget={"params": 2000})
    assert sum(p.numel() for p in model.parameters()) <= 2000
    model = conv_net()
    ep.prune_channels(model, "magnitude", budget={"params": 0.4})
    assert sum(p.numel() for p in model.parameters()) <= 0.4 * before


def test_a_memory_budget_needs_its_batch_size_and_is_met():
    with pytest.raises(PruningError, match="batch size"):
        ep.prune_channels(conv_net(), "magnitude", budget={"memory_mb": 1.0})
    model = conv_net()
    dense = ep.prune_channels(conv_net(), "magnitude", budget={"memory_mb": 1e6, "batch_size": 64})
    result = ep.prune_channels(model, "magnitude", budget={"memory_mb": 0.5 * dense.info["budget"]["memory_mb"],
                                                           "batch_size": 64})
    assert result.info["budget"]["memory_mb"] <= 0.5 * dense.info["budget"]["memory_mb"]


def test_impossible_or_malformed_budgets_are_clear_errors():
    with pytest.raises(PruningError, match="cannot be met"):
        ep.prune_channels(conv_net(), "crop", data=data(), budget={"flops": 1e-6})
    with pytest.raises(PruningError, match="exactly one"):
        ep.prune_channels(conv_net(), "crop", 0.5, data=data(), budget={"flops": 0.5})
    with pytest.raises(PruningError, match="exactly one of"):
        ep.prune_channels(conv_net(), "crop", data=data(), budget={"latency": 0.5})
    with pytest.raises(PruningError, match="fraction"):
        ep.prune_channels(conv_net(), "crop", data=data(), budget={"flops": 4})
