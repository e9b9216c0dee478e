"""EarlyCroP's trigger on recorded distances, and EarlyPruner in a plain training loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import earlyprune as ep
from earlyprune.early import EarlyPruner
from earlyprune.triggers import WeightDistance, WeightDistanceTrigger

from conftest import SmallCNN, batch_for


def run_trigger(distances, **kwargs):
    trigger = WeightDistanceTrigger(**kwargs)
    for epoch, d in enumerate(distances, start=2):
        if trigger.update(epoch, d):
            return epoch, trigger
    return None, trigger


def test_trigger_fires_when_the_change_of_distance_falls_below_its_threshold():
    # d_2 = 0.5 -> threshold 0.05. Changes: e3 0.2, e4 0.1, e5 0.06, e6 0.04 < 0.05 -> fires at 6.
    fired, trigger = run_trigger([0.5, 0.7, 0.8, 0.86, 0.90, 0.92], relative_threshold=0.1)
    assert trigger.threshold == pytest.approx(0.05)
    assert fired == 6


def test_trigger_respects_cap_and_never_fires_twice():
    fired, trigger = run_trigger([0.5, 1.0, 1.5, 2.0, 2.5], relative_threshold=0.1, cap_epoch=4)
    assert fired == 4
    assert trigger.update(7, 2.5) is False


def test_trigger_threshold_is_positive_even_for_tiny_changes():
    """The official rule can give a threshold <= 0 (never fires); this one is relative to d_2 > 0."""
    fired, _ = run_trigger([1e-4, 1.5e-4, 1.6e-4], relative_threshold=0.2)
    assert fired == 4  # change 1e-5 < 2e-5


def test_weight_distance_is_normalised():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    tracker = WeightDistance({"w": w})
    tracker.set_reference()
    with torch.no_grad():
        w.add_(torch.tensor([0.0, 5.0]))
    assert tracker.distance() == pytest.approx(1.0)  # ‖(0,5)‖ / ‖(3,4)‖


def train_epochs(model, optimizer, pruner, epochs, seed=0):
    g = torch.Generator().manual_seed(seed)
    events = []
    for epoch in range(1, epochs + 1):
        for _ in range(5):
            x = torch.randn(16, *SmallCNN.input_shape, generator=g)
            y = torch.randint(0, 4, (16,), generator=g)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        event = pruner.step(epoch)
        if event is not None:
            events.append(event)
    return events


def test_early_pruner_at_fixed_epoch_prunes_once_and_training_keeps_zeros():
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pruner = EarlyPruner(model, "crop", 0.9, batch_for(SmallCNN.input_shape), optimizer=optimizer, at_epoch=2)
    events = train_epochs(model, optimizer, pruner, 4)
    assert [e.epoch for e in events] == [2]
    event = events[0]
    masks = pruner.result
    assert masks.kept() == round(0.1 * masks.total())
    assert masks.info["schedule"][0] == 0.5 and masks.info["schedule"][-1] == 0.9  # CroP-it schedule
    assert event.nonzero_after < event.nonzero_before and event.flops_after < event.flops_before
    params = dict(model.named_parameters())
    assert all(torch.all(params[n][~m] == 0) for n, m in masks.items())  # momentum did not move them


def test_early_pruner_fires_by_the_trigger_or_the_cap():
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = EarlyPruner(model, "snip", 0.5, batch_for(SmallCNN.input_shape), optimizer=optimizer, cap_epoch=6)
    events = train_epochs(model, optimizer, pruner, 7)
    assert len(events) == 1 and 3 <= events[0].epoch <= 6
    distances = pruner.trigger.distances
    assert set(distances) == set(range(2, events[0].epoch + 1))
    if events[0].reason == "weight distance settled":
        e = events[0].epoch
        assert abs(distances[e] - distances[e - 1]) < pruner.trigger.threshold
