"""Activation-density pruning: measured density, dead channels removed, outputs preserved, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune import models
from earlyprune.activation_density import ActivationDensityPruner


class DeadHalfMLP(nn.Module):
    """8 inputs -> 6 hidden (ReLU) -> 4 hidden (ReLU) -> 3; hidden units 1, 3, 5 of the first layer are dead."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(6, 4)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc1.weight.abs_()
            self.fc1.bias.fill_(1.0)  # alive units: positive weights on positive inputs, positive bias
            self.fc1.weight[1::2] = 0.0
            self.fc1.bias[1::2] = -1.0  # dead units: always -1 before the ReLU
            self.fc2.weight.abs_()
            self.fc2.bias.fill_(1.0)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def test_density_from_hooks_equals_a_direct_count():
    torch.manual_seed(0)
    model = models.create("lenet5", width=0.5)
    x = torch.randn(6, *model.input_shape)
    pruner = ActivationDensityPruner(model, x[:1], count_every=1)
    model.train()
    model(x[:4])
    model(x[4:])
    with torch.no_grad():
        a1 = model.relu1(model.conv1(x))
        a3 = model.relu3(model.fc1(model.flatten(model.pool2(model.relu2(model.conv2(model.pool1(a1)))))))
    density = pruner.channel_density()
    torch.testing.assert_close(density["conv1"], (a1 != 0).double().mean(dim=(0, 2, 3)))
    torch.testing.assert_close(density["fc1"], (a3 != 0).double().mean(dim=0))
    assert pruner.layer_density()["conv1"] == pytest.approx(float((a1 != 0).double().mean()))
    model.eval()
    model(x)  # evaluation passes are not counted
    torch.testing.assert_close(pruner.channel_density()["conv1"], density["conv1"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_density_of_a_low_precision_model_is_counted_exactly(dtype):
    torch.manual_seed(0)
    model = models.create("lenet5", width=0.5).to(dtype)
    x = torch.randn(8, *model.input_shape, dtype=dtype)  # 8 x 24 x 24 = 4608 outputs per conv1 channel
    pruner = ActivationDensityPruner(model, x[:1], count_every=1)
    model.train()
    model(x)
    with torch.no_grad():
        a1 = model.relu1(model.conv1(x))
    # A sum in float16 stops at 2048 and bfloat16 rounds above 256; the count must be exact.
    torch.testing.assert_close(pruner.channel_density()["conv1"], (a1 != 0).double().mean(dim=(0, 2, 3)))


def test_count_every_counts_only_every_kth_training_batch():
    torch.manual_seed(0)
    model = models.create("lenet5", width=0.5)
    batches = [torch.randn(4, *model.input_shape) for _ in range(5)]
    pruner = ActivationDensityPruner(model, batches[0][:1], count_every=2)
    model.train()
    for batch in batches:
        model(batch)
    counted = torch.cat([batches[0], batches[2], batches[4]])  # forward passes 0, 2, 4
    with torch.no_grad():
        a1 = model.relu1(model.conv1(counted))
    torch.testing.assert_close(pruner.channel_density()["conv1"], (a1 != 0).double().mean(dim=(0, 2, 3)))


def test_dead_channels_are_removed_and_nothing_else_and_outputs_are_kept():
    torch.manual_seed(0)
    model = DeadHalfMLP()
    x = torch.rand(32, 8)
    with torch.no_grad():
        expected = model(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = ActivationDensityPruner(model, x[:1], optimizer=optimizer)
    model.train()
    model(x)
    event = pruner.epoch_end(1)
    assert event is not None
    assert event.densities == {"fc1": pytest.approx(0.5), "fc2": pytest.approx(1.0)}
    assert model.fc1.out_features == 3 and model.fc2.out_features == 4  # only the dead half went
    assert torch.all(model.fc1.bias > 0)  # the survivors are the live units
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert model.fc2.in_features == 3
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_resizing_during_training_keeps_training_and_stops():
    torch.manual_seed(0)
    model = models.create("resnet20", width=0.25)
    x, y = torch.randn(16, *model.input_shape), torch.arange(16) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    pruner = ActivationDensityPruner(model, x[:1], optimizer=optimizer, prune_every=2, stop_below=0.99)
    widths = []
    for epoch in range(1, 5):
        for _ in range(2):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        scheduler.step()
        event = pruner.epoch_end(epoch)
        widths.append(model.conv1.out_channels)
        if epoch % 2:
            assert event is None
    assert len(pruner.events) == 1 and pruner.stopped  # every cut was below 99%: resizing stopped
    hooked = [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []  # and the rest of training runs without the counting hooks
    assert widths[0] == 4 and widths[-1] < 4
    event = pruner.events[0]
    assert event.params_after < event.params_before and event.widths_after["conv1"] == widths[-1]
    assert torch.isfinite(model(x)).all()


def train_lenet5_with_density_pruner(epochs: int, tell_epoch: bool, **pruner_options) -> ActivationDensityPruner:
    """One training step per "epoch" on a fixed batch, then ``epoch_end`` (told the epoch, or not)."""
    torch.manual_seed(0)
    model = models.create("lenet5")
    x, y = torch.randn(16, *model.input_shape), torch.arange(16) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = ActivationDensityPruner(model, x[:1], optimizer=optimizer, stop_below=0.0, count_every=1,
                                     **pruner_options)
    for epoch in range(1, epochs + 1):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.epoch_end(epoch if tell_epoch else None)
    return pruner


def test_no_resize_after_the_last_epoch():
    pruner = train_lenet5_with_density_pruner(5, tell_epoch=True, prune_every=1, last_epoch=2)
    assert [e.epoch for e in pruner.events] == [1, 2]  # ReLU layers near half dense shrink every epoch until 2
    assert pruner.stopped


def test_other_activations_and_functional_relu_are_refused():
    with pytest.raises(ep.PruningError, match="GELU"):
        ActivationDensityPruner(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)), torch.randn(1, 4))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(ep.PruningError, match="hooks nn.ReLU modules and the model has none"):
        ActivationDensityPruner(Functional(), torch.randn(1, 4))


def test_epochs_are_counted_across_resizes_when_not_given():
    # no epoch given to epoch_end: the pruner counts the calls
    pruner = train_lenet5_with_density_pruner(10, tell_epoch=False, prune_every=2, last_epoch=6)
    assert [e.epoch for e in pruner.events] == [2, 4, 6] and pruner.stopped


def test_a_relu_module_used_twice_is_refused_and_a_relu_after_a_concatenation_is_not_measured():
    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))

    with pytest.raises(ep.PruningError, match="relu run.* more than once per forward pass"):
        ActivationDensityPruner(Reused(), torch.randn(1, 4))

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 5, 3, padding=1)
            self.relu = nn.ReLU()
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.relu(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))

    model = Concat()
    x = torch.randn(8, 1, 6, 6)
    pruner = ActivationDensityPruner(model, x[:1], count_every=1)
    model(x)
    assert pruner.channel_density() == {}  # the 8-channel ReLU belongs to neither 3- nor 5-channel group
    with pytest.raises(ep.PruningError, match="no activations were measured"):
        pruner.resize(1)


def test_building_the_pruner_keeps_every_submodule_in_its_own_mode():
    torch.manual_seed(0)
    model = models.create("lenet5", width=0.5)
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, nn.ReLU)][0]
    frozen.eval()  # a submodule the user froze in eval mode inside a training model
    modes = {name: m.training for name, m in model.named_modules()}
    ActivationDensityPruner(model, torch.randn(1, 1, 28, 28))
    assert {name: m.training for name, m in model.named_modules()} == modes


class HalfFiringLayer(nn.Module):
    """1 input -> 8 units (ReLU) -> 1: unit i has weight (-1)**i and no bias, so on the inputs +1 and -1 each
    unit fires on exactly one of the two: every unit, and so the layer, is half dense whatever its width."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(1, 8, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(8, 1)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[(-1.0) ** i] for i in range(8)]))

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def test_each_resize_keeps_the_density_fraction_of_the_current_width():
    # density 0.5 at both resizes: 8 -> round(0.5 * 8) = 4 -> round(0.5 * 4) = 2 (of the current width, so the
    # compression compounds); a rule on the original width would stay at 4.
    model = HalfFiringLayer()
    x = torch.tensor([[1.0], [-1.0]])
    pruner = ActivationDensityPruner(model, x[:1], prune_every=1, stop_below=0.0, min_fraction=0.0, count_every=1)
    model.train()
    widths = []
    for epoch in (1, 2):
        model(x)
        event = pruner.epoch_end(epoch)
        assert event is not None and event.densities == {"fc1": pytest.approx(0.5)}
        widths.append(model.fc1.out_features)
    assert widths == [4, 2]
    # ties in density are broken by index (stable sort): units 0 and 1 remain, one firing on each input
    assert model.fc1.weight.flatten().tolist() == [1.0, -1.0]


@pytest.mark.parametrize("settings, message", [
    ({"last_epoch": 0}, "last_epoch must be an integer >= 1"),
    ({"last_epoch": 2.5}, "last_epoch must be an integer >= 1"),
    ({"stop_below": 1.5}, r"stop_below must be a number in \[0, 1\]"),
    ({"min_fraction": -0.1}, r"min_fraction must be a number in \[0, 1\]"),
    ({"min_channels": 0}, "min_channels must be an integer >= 1"),
    ({"prune_every": 0}, "prune_every must be an integer >= 1"),
    ({"count_every": True}, "count_every must be an integer >= 1"),
])
def test_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(ep.PruningError, match=message):
        ActivationDensityPruner(DeadHalfMLP(), torch.rand(1, 8), **settings)


def test_run_options_default_to_half_the_epochs_and_are_checked():
    from earlyprune.activation_density import RUN_OPTIONS, run_settings
    from earlyprune.experiments.config import RunConfig

    assert run_settings({}, epochs=8) == {**RUN_OPTIONS, "last_epoch": 4}
    assert run_settings({}, epochs=1)["last_epoch"] == 1
    assert run_settings({"last_epoch": 6, "stop_below": 0.0}, epochs=8) == {**RUN_OPTIONS, "last_epoch": 6,
                                                                            "stop_below": 0.0}
    config = RunConfig(method="activation_density", options={"last_epoch": 3})
    assert config.pruning.options == {"last_epoch": 3}
    with pytest.raises(ep.PruningError, match="unknown option 'temperature' for method 'activation_density'"):
        RunConfig(method="activation_density", options={"temperature": 100})
    with pytest.raises(ep.PruningError, match="last_epoch must be an integer >= 1"):
        RunConfig(method="activation_density", options={"last_epoch": 0})
    with pytest.raises(ep.PruningError, match="stop_below"):
        RunConfig(method="activation_density", options={"stop_below": "often"})


def test_earlyprune_run_passes_the_last_epoch_option_to_the_pruner(tmp_path):
    from earlyprune.cli import main
    from earlyprune.experiments.records import read_records

    def resize_epochs(*options: str) -> list[int]:
        out = tmp_path / f"runs{len(options)}.jsonl"
        code = main(["run", "--dataset", "mnist-sample", "--model", "lenet5", "--width", "0.5", "--epochs", "3",
                     "--train-subset", "200", "--batch-size", "50", "--method", "activation_density",
                     "--out", str(out), *options])
        assert code == 0
        (record,) = list(read_records(out))
        return [event["epoch"] for event in record["prune_events"]]

    assert resize_epochs() == [1]  # the default last epoch: half of 3 epochs
    # resizes at epochs 1 and 2 (stop_below=0: no stop on a small cut), none after the given last epoch
    assert resize_epochs("--option", "last_epoch=2", "--option", "stop_below=0", "--option", "count_every=1") == [1, 2]
