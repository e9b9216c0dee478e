"""Structured pruning: traced groups, surgery equals gating, optimizer state carried, gate-gradient importance."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune import models
from earlyprune.structured import (
    ChannelGroup,
    channel_gates,
    channel_groups,
    channel_importance,
    select_channels,
    shrink,
)
from earlyprune.structured.surgery import slice_like

from conftest import mlp

# ----- small models of the kinds the library must handle -------------------------------------------------


class VGGLike(nn.Module):
    """conv-BN-ReLU stacks with max-pooling, then flatten -> Linear -> ReLU -> Linear.

    The convs have no bias: before a BatchNorm in training mode its true gradient is 0, and Adam would
    turn the rounding noise in it into different steps on two equal models.
    """

    input_shape = (3, 8, 8)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # 1x1 projection shortcut
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetLike(nn.Module):
    """A CIFAR-ResNet in miniature: two stages of residual blocks, a projection shortcut between them."""

    input_shape = (3, 8, 8)

    def __init__(self, classes: int = 10, widths: tuple[int, int] = (4, 8)):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.blocks = nn.Sequential(Block(widths[0], widths[0], 1), Block(widths[0], widths[1], 2),
                                    Block(widths[1], widths[1], 1))
        self.fc = nn.Linear(widths[1], classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Two branches joined by a concatenation."""

    input_shape = (3, 8, 8)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.b, self.bn_b = nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5)
        self.merge, self.bn_m = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], dim=1)
        return self.fc(F.relu(self.bn_m(self.merge(x))).mean(dim=(2, 3)))


class MLPNet(nn.Sequential):
    """Neurons, BatchNorm1d and dropout."""

    input_shape = (6,)

    def __init__(self, classes: int = 10):
        super().__init__(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, classes))


OWN = {"vgg_like": VGGLike, "resnet_like": ResNetLike, "concat": ConcatNet, "mlp": MLPNet}
REFERENCE = ["vgg11", "resnet20", "resnet18", "lenet5", "lenet300"]


def make(name: str, seed: int = 0, n: int = 16):
    torch.manual_seed(seed)
    model = OWN[name]() if name in OWN else models.create(name, width=0.25)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn((n, *model.input_shape), generator=g)
    y = torch.arange(n) % 10
    return model, x, y


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def random_keep(groups, fraction=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {group.index: torch.randperm(group.size, generator=g)[: max(1, round(fraction * group.size))].sort().values
            for group in groups}


def gate_values(groups, keep):
    values = {}
    for group in groups:
        v = torch.zeros(group.size)
        v[keep[group.index]] = 1.0
        values[group.index] = v
    return values


def assert_plain(model: nn.Module) -> None:
    """Natively narrow: no hooks, no mask buffers, every tensor matches its layer's declared widths."""
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape == (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.weight.shape == m.running_mean.shape == m.running_var.shape == (m.num_features,)
    assert not any("mask" in n for n, _ in model.named_buffers())
    for p in model.parameters():
        assert type(p) is nn.Parameter and p.is_leaf and p.is_contiguous()


# ----- groups ----------------------------------------------------------------------------------------


def test_residual_channels_form_one_group_with_members_and_dims():
    model, x, _ = make("resnet_like")
    groups = channel_groups(model, x[:1])
    assert {frozenset(g.producers) for g in groups} == {
        frozenset({"stem", "blocks.0.conv2"}), frozenset({"blocks.0.conv1"}), frozenset({"blocks.1.conv1"}),
        frozenset({"blocks.1.conv2", "blocks.1.shortcut.0", "blocks.2.conv2"}), frozenset({"blocks.2.conv1"}),
    }
    stage1 = next(g for g in groups if "stem" in g.producers)
    stage2 = next(g for g in groups if "blocks.1.shortcut.0" in g.producers)
    assert stage1.size == 4 and stage2.size == 8 and [g.index for g in groups] == list(range(len(groups)))
    # Gates sit after the BatchNorm of each producer (the projection's BN included).
    assert stage1.gate_points == ["bn", "blocks.0.bn2"]
    assert stage2.gate_points == ["blocks.1.bn2", "blocks.1.shortcut.1", "blocks.2.bn2"]
    dims1 = {p: d for m in stage1.members for p, d in m.params.items()}
    assert dims1["stem.weight"] == 0 and dims1["bn.bias"] == 0
    assert dims1["blocks.1.conv1.weight"] == 1 and dims1["blocks.1.shortcut.0.weight"] == 1
    dims2 = {p: d for m in stage2.members for p, d in m.params.items()}
    assert dims2["fc.weight"] == 1 and "fc.bias" not in dims2  # the classifier reads the stage, keeps its outputs
    assert all("fc" not in g.producers for g in groups)


def test_reference_resnet20_stages_are_tied():
    model, x, _ = make("resnet20")
    groups = channel_groups(model, x[:1])
    stage1 = next(g for g in groups if "conv1" in g.producers)
    assert set(stage1.producers) == {"conv1", "layers.0.0.conv2", "layers.0.1.conv2", "layers.0.2.conv2"}
    assert len(groups) == 3 + 9  # 3 stages + one conv1 per block
    assert all("fc" not in g.producers for g in groups)


def test_flatten_linear_block_and_concatenated_branches():
    model, x, _ = make("vgg_like")
    groups = channel_groups(model, x[:1])
    assert [g.producers for g in groups] == [["features.0"], ["features.3"], ["features.7"], ["classifier.1"]]
    last_conv = groups[2]
    fc = next(m for m in last_conv.members if m.module == "classifier.1")
    assert fc.direction == "in" and fc.params == {"classifier.1.weight": 1} and fc.width == 8 * 2 * 2

    model, x, _ = make("concat")
    groups = channel_groups(model, x[:1])
    assert [g.producers for g in groups] == [["a"], ["b"], ["merge"]]
    widths = {g.producers[0]: next(m.width for m in g.members if m.module == "merge") for g in groups[:2]}
    assert widths == {"a": 3, "b": 5}


def test_ignored_layers_and_untraceable_models():
    model, x, _ = make("vgg_like")
    groups = channel_groups(model, x[:1], ignored_layers=["features.3"])
    assert all("features.3" not in g.producers for g in groups) and len(groups) == 3
    with pytest.raises(ep.PruningError, match="could not trace"):
        channel_groups(model, torch.randn(1, 5, 8, 8))  # inputs the model cannot take
    with pytest.raises(ep.PruningError, match="not a module"):
        channel_groups(model, x[:1], ignored_layers=["nope"])


# ----- surgery ---------------------------------------------------------------------------------------

CASES = ([(name, False) for name in [*OWN, *REFERENCE]]  # eval mode: running statistics
         + [(name, True) for name in ["vgg_like", "resnet_like", "concat"]])  # train mode: batch statistics


@pytest.mark.parametrize("name,train", CASES)
def test_shrunk_model_equals_the_gated_large_model(name, train):
    model, x, _ = make(name)
    randomize_batchnorm(model)
    large = copy.deepcopy(model)
    groups = channel_groups(model, x[:2])
    keep = random_keep(groups, 0.5, seed=3)
    large_groups = channel_groups(large, x[:2])
    model.train(train), large.train(train)
    with torch.no_grad(), channel_gates(large, large_groups, gate_values(large_groups, keep), requires_grad=False):
        expected = large(x)
    result = shrink(model, groups, keep)
    with torch.no_grad():
        actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert result.params_after < result.params_before == sum(p.numel() for p in large.parameters())
    assert result.params_after == sum(p.numel() for p in model.parameters())
    for g in groups:  # widths after surgery are the kept counts
        for producer in g.producers:
            assert result.widths_after[producer] == len(keep[g.index]) and result.widths_before[producer] == g.size
    assert_plain(model)


@pytest.mark.parametrize("name", ["vgg_like", "resnet_like", "concat", "mlp", "resnet20"])
def test_classifier_kept_and_every_group_keeps_a_channel_at_high_sparsity(name):
    model, x, y = make(name)
    groups = channel_groups(model, x[:2])
    scores = channel_importance(model, "random", None, groups, seed=1)
    keep = select_channels(scores, groups, 0.99)
    assert all(len(k) >= 1 for k in keep.values())
    result = shrink(model, groups, keep)
    assert all(w >= 1 for w in result.widths_after.values())
    model.eval()
    assert model(x).shape == (len(x), 10)  # the classifier's outputs are all there


def test_keep_map_slices_parameters_grads_and_masks_consistently():
    model, x, y = make("vgg_like")
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    old_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.features[1].weight.requires_grad_(False)  # a frozen BatchNorm scale stays frozen
    g = torch.Generator().manual_seed(0)
    masks = {n: (torch.rand(p.shape, generator=g) > 0.3).float() for n, p in old.items()}
    groups = channel_groups(model, x[:1])
    keep = random_keep(groups, 0.5, seed=1)
    result = shrink(model, groups, keep)
    new = dict(model.named_parameters())
    assert set(result.kept_indices) == {n for n in old if new[n].shape != old[n].shape}
    sliced_masks = result.slice(masks)
    for n, p in new.items():
        dims = result.kept_indices.get(n, {})
        assert torch.equal(slice_like(old[n], dims), p.detach()), n
        assert torch.equal(slice_like(old_grads[n], dims), p.grad), n
        assert sliced_masks[n].shape == p.shape
    assert not model.features[1].weight.requires_grad and model.features[0].weight.requires_grad
    # The flatten->Linear block: channel c of the last conv owns inputs 4c..4c+3 of the Linear.
    kept = keep[groups[2].index]
    expected = (kept[:, None] * 4 + torch.arange(4)).flatten()
    assert torch.equal(result.kept_indices["classifier.1.weight"][1], expected)
    rows = keep[groups[3].index]  # the hidden Linear's own outputs are a group too
    assert torch.equal(result.kept_indices["classifier.1.weight"][0], rows)
    assert torch.equal(sliced_masks["classifier.1.weight"], masks["classifier.1.weight"][rows][:, expected])
    assert torch.equal(result.kept_indices["features.7.weight"][0], kept)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["resnet_like", "vgg_like", "resnet20"])
def test_optimizer_step_after_surgery_equals_the_masked_step(name, opt_name):
    model, x, y = make(name)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    for _ in range(3):  # non-trivial momentum / moments
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    twin = copy.deepcopy(model)
    twin_opt = OPTIMIZERS[opt_name](twin.parameters())
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))

    groups = channel_groups(model, x[:1])
    keep = random_keep(groups, 0.6, seed=1)
    result = shrink(model, groups, keep, optimizer=optimizer)
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()

    twin_groups = channel_groups(twin, x[:1])
    with channel_gates(twin, twin_groups, gate_values(twin_groups, keep), requires_grad=False):
        twin_opt.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        twin_opt.step()
    twin_params = dict(twin.named_parameters())
    for pname, p in model.named_parameters():
        dims = result.kept_indices.get(pname, {})
        twin_p = twin_params[pname]
        torch.testing.assert_close(p.detach(), slice_like(twin_p.detach(), dims), rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{pname}: {m}")
        state, twin_state = optimizer.state[p], twin_opt.state[twin_p]
        assert set(state) == set(twin_state)
        for key, value in state.items():
            expected = twin_state[key]
            if key != "step":
                expected = slice_like(expected, dims)
            torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6, msg=lambda m: f"{pname} {key}: {m}")


def test_lr_scheduler_goes_on_after_surgery():
    model, x, y = make("resnet_like")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    scheduler.step()
    groups = channel_groups(model, x[:1])
    shrink(model, groups, random_keep(groups), optimizer=optimizer)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    for lr in (0.05, 0.025):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
        optimizer.step()
        scheduler.step()
        for n, p in model.named_parameters():  # plain SGD: the shrunk parameters moved by lr * grad
            torch.testing.assert_close(p.detach(), before[n][0] - lr * before[n][1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_state_dict_of_shrunk_model_saves_and_loads(tmp_path):
    model, x, _ = make("resnet_like")
    groups = channel_groups(model, x[:1])
    keep = random_keep(groups, 0.5, seed=2)
    shrink(model, groups, keep)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other, _, _ = make("resnet_like", seed=5)
    shrink(other, channel_groups(other, x[:1]), keep)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    model.eval(), other.eval()
    torch.testing.assert_close(other(x), model(x))


def test_groups_from_a_copy_need_example_inputs_and_stale_groups_are_refused():
    model, x, _ = make("resnet_like")
    twin = copy.deepcopy(model)
    groups = channel_groups(twin, x[:1])
    keep = random_keep(groups)
    with pytest.raises(ep.PruningError, match="example_inputs"):
        shrink(model, groups, keep)
    shrink(model, groups, keep, example_inputs=x[:1])  # traced again on this model
    shrink(twin, groups, keep)
    model.eval(), twin.eval()
    torch.testing.assert_close(model(x), twin(x))
    with pytest.raises(ep.PruningError, match="trace again"):
        shrink(twin, groups, keep)
    fresh = channel_groups(twin, x[:1])
    with pytest.raises(ep.PruningError, match="vanish"):
        shrink(twin, fresh, {fresh[0].index: torch.tensor([], dtype=torch.long)})
    with pytest.raises(ep.PruningError, match="outside"):
        shrink(twin, fresh, {fresh[0].index: torch.tensor([0, 99])})


def test_unstructured_masks_are_sliced_with_the_channels():
    model, x, y = make("vgg11")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ep.prune(model, "magnitude", 0.8, optimizer=optimizer)
    ep.prune_channels(model, "random", 0.5, data=(x, y), optimizer=optimizer)
    masks = ep.masking.applied_masks(model)  # masks are values: the surgery bound sliced ones
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert mask.shape == params[name].shape
        assert torch.all(params[name][~mask] == 0)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(torch.all(params[n][~m] == 0) for n, m in masks.items())  # still zero after a step


# ----- selection ---------------------------------------------------------------------------------------


def test_selection_ranks_globally_without_per_group_normalisation():
    groups = [ChannelGroup(0, 4, ["a"], ["a"]), ChannelGroup(1, 6, ["b"], ["b"])]
    # Raw scores: every channel of group 0 outranks group 1. Normalised per group (by max, sum or z-score)
    # group 1's channel 0 would outrank group 0's channel 0.
    scores = {0: torch.tensor([1.0, 4.0, 2.0, 3.0]), 1: torch.tensor([0.5, 0.9, 0.1, 0.2, 0.3, 0.4])}
    keep = select_channels(scores, groups, 0.5)  # 5 of 10 stay
    assert keep[0].tolist() == [0, 1, 2, 3] and keep[1].tolist() == [1]
    assert keep[0].dtype == torch.long
    keep = select_channels(scores, groups, 0.5, min_fraction=0.5)  # group 1 keeps its best 3 first
    assert keep[1].tolist() == [0, 1, 5] and keep[0].tolist() == [1, 3]
    keep = select_channels(scores, groups, 0.99)
    assert keep[0].tolist() == [1] and keep[1].tolist() == [1]
    with pytest.raises(ep.PruningError, match="shape"):
        select_channels({0: scores[0], 1: scores[0]}, groups, 0.5)


def test_selection_removes_the_asked_fraction_of_all_channels():
    model, x, _ = make("resnet20")
    groups = channel_groups(model, x[:1])
    scores = channel_importance(model, "random", None, groups)
    total = sum(g.size for g in groups)
    for sparsity in (0.3, 0.5, 0.75):
        keep = select_channels(scores, groups, sparsity)
        assert sum(len(k) for k in keep.values()) == round((1 - sparsity) * total)
        assert all(torch.equal(k, k.sort().values) for k in keep.values())


def test_channel_multiple_rounds_widths_up_with_the_next_best_channels():
    model, x, _ = make("resnet20")
    groups = channel_groups(model, x[:1])
    scores = {g.index: torch.rand(g.size, generator=torch.Generator().manual_seed(g.index)) for g in groups}
    plain = select_channels(scores, groups, 0.6)
    rounded = select_channels(scores, groups, 0.6, multiple=4)
    for g in groups:
        n = len(rounded[g.index])
        assert n % 4 == 0 or n == g.size
        assert set(plain[g.index].tolist()) <= set(rounded[g.index].tolist())  # only additions
        assert n - len(plain[g.index]) < 4
        best = torch.sort(scores[g.index], descending=True, stable=True).indices[:n]
        assert set(rounded[g.index].tolist()) == set(best.tolist())  # a group keeps its best channels


# ----- importance --------------------------------------------------------------------------------------


def test_structured_snip_equals_activation_times_its_gradient():
    torch.manual_seed(0)
    model = mlp((6, 5, 4, 3)).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.arange(10) % 3
    groups = channel_groups(model, x[:1])
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    scores = channel_importance(model, "snip", batches, groups)
    # Independent route: dL/dc_j at c = 1 is the sum over the batch of h_j * dL/dh_j, h the layer's output;
    # summed over the batches (each with its own mean loss), then the absolute value.
    expected = {"0": torch.zeros(5, dtype=torch.float64), "2": torch.zeros(4, dtype=torch.float64)}
    for xb, yb in batches:
        h1 = model[0](xb)
        h1.retain_grad()
        h2 = model[2](torch.relu(h1))
        h2.retain_grad()
        F.cross_entropy(model[4](torch.relu(h2)), yb).backward()
        expected["0"] += (h1 * h1.grad).sum(0).detach()
        expected["2"] += (h2 * h2.grad).sum(0).detach()
    assert [g.producers[0] for g in groups] == ["0", "2"]
    for g in groups:
        torch.testing.assert_close(scores[g.index], expected[g.producers[0]].abs())


def test_structured_snip_sums_over_residual_tied_layers():
    model, x, y = make("resnet_like")
    model.double()
    x = x.double()
    groups = channel_groups(model, x[:1])
    stage2 = next(g for g in groups if "blocks.1.shortcut.0" in g.producers)
    scores = channel_importance(model, "snip", [(x, y)], groups)
    # Independent route, in training mode: Σ over the stage's BatchNorm outputs y of Σ_{n,h,w} y * dL/dy.
    outputs = {}
    names = ["blocks.1.bn2", "blocks.1.shortcut.1", "blocks.2.bn2"]
    modules = dict(model.named_modules())

    def keep_output(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    handles = [modules[n].register_forward_hook(keep_output(n)) for n in names]
    model.train()
    F.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    expected = sum((outputs[n] * outputs[n].grad).sum(dim=(0, 2, 3)) for n in names).abs()
    torch.testing.assert_close(scores[stage2.index], expected.detach())
    single = (outputs["blocks.2.bn2"] * outputs["blocks.2.bn2"].grad).sum(dim=(0, 2, 3)).abs()
    assert not torch.allclose(scores[stage2.index], single.detach())


def _z(model, groups, values, batches, weights, g):
    """z = Σ_b g · ∇_w L_b(w, c) over the Conv/Linear weights, with the gates at ``values``."""
    z = 0.0
    with channel_gates(model, groups, values, requires_grad=False):
        for xb, yb in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(xb), yb), weights)
            z += sum((a * b).sum() for a, b in zip(grads, g)).item()
    return z


class TinyConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.c2, self.b2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.tanh(self.b1(self.c1(x)))
        return self.fc(torch.tanh(self.b2(self.c2(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_structured_crop_matches_finite_differences_of_z(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        model, x = mlp((5, 4, 3)).double(), torch.randn(8, 5, dtype=torch.float64)
        weights = [model[0].weight, model[2].weight]  # Conv/Linear weights only, as the official code
    else:
        model, x = TinyConvBN().double(), torch.randn(8, 2, 4, 4, dtype=torch.float64)
        weights = [model.c1.weight, model.c2.weight, model.fc.weight]
    y = torch.arange(len(x)) % 3
    model.train()
    groups = channel_groups(model, x[:2])
    half = len(x) // 2
    batches = [(x[:half], y[:half]), (x[half:], y[half:])]
    scores = channel_importance(model, "crop", batches, groups)
    # g = Σ_b ∇_w L_b, held constant
    g = [sum(t) for t in zip(*(torch.autograd.grad(F.cross_entropy(model(xb), yb), weights) for xb, yb in batches))]
    eps = 1e-6
    for group in groups:
        for j in range(group.size):
            plus, minus = torch.ones(group.size, dtype=torch.float64), torch.ones(group.size, dtype=torch.float64)
            plus[j] += eps
            minus[j] -= eps
            fd = (_z(model, groups, {group.index: plus}, batches, weights, g)
                  - _z(model, groups, {group.index: minus}, batches, weights, g)) / (2 * eps)
            assert scores[group.index][j].item() == pytest.approx(abs(fd), rel=1e-5, abs=1e-10)


@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "crop"])
@pytest.mark.parametrize("name", ["vgg_like", "mlp"])
def test_structured_scoring_leaves_the_model_untouched(method, name):
    model, x, y = make(name)
    model.train()
    next(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)).eval()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    groups = channel_groups(model, x[:2])
    rng = torch.get_rng_state()
    scores = channel_importance(model, method, [(x, y)], groups, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_hooks for m in model.modules())
    for g in groups:
        s = scores[g.index]
        assert s.shape == (g.size,) and s.dtype == torch.float64
        assert bool(torch.isfinite(s).all()) and bool((s >= 0).all())
    again = channel_importance(model, method, [(x, y)], groups, seed=3)
    assert all(torch.equal(again[k], v) for k, v in scores.items())  # reproducible


def test_structured_bad_input():
    model, x, y = make("lenet300")
    with pytest.raises(ep.PruningError, match="no structured form"):
        ep.prune_channels(model, "grasp", 0.5, data=(x, y))
    with pytest.raises(ep.PruningError, match="sparsity"):
        ep.prune_channels(model, "snip", 1.0, data=(x, y))
    groups = channel_groups(model, x[:1])
    with pytest.raises(ep.PruningError, match="needs data"):
        channel_importance(model, "crop", None, groups)


def test_structured_prune_on_a_schedule_rescores_each_round_and_composes_the_kept_indices(monkeypatch):
    import earlyprune.structured.api as api
    from earlyprune.schedules import crop_it_schedule

    model, x, y = make("vgg11")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    total = sum(g.size for g in channel_groups(model, x[:1]))
    rounds = []
    original = api.channel_importance

    def counting(model_, method, batches, groups, **kwargs):
        rounds.append(sum(g.size for g in groups))
        return original(model_, method, batches, groups, **kwargs)

    monkeypatch.setattr(api, "channel_importance", counting)
    result = ep.prune_channels(model, "crop", 0.75, data=(x, y), schedule="crop-it")
    schedule = crop_it_schedule(0.75)
    # One rescoring per round, each on the model the previous round left, the first on the full model.
    assert len(rounds) == len(schedule) and rounds[0] == total
    assert rounds[1:] == sorted(rounds[1:], reverse=True) and rounds[1] == round(0.5 * total)
    after = sum(g.size for g in channel_groups(model, x[:1]))
    assert after == round(0.25 * total)
    # The composed kept indices slice the original tensors into the final ones.
    assert result.params_before == sum(t.numel() for t in before.values())
    for name, param in model.named_parameters():
        torch.testing.assert_close(slice_like(before[name], result.kept_indices.get(name, {})), param.detach())


def test_structured_early_pruner_prunes_on_the_crop_it_schedule_and_training_goes_on(monkeypatch):
    import earlyprune.structured.api as api
    from earlyprune import EarlyPruner
    from earlyprune.schedules import crop_it_schedule

    rounds = []
    original = api.channel_importance
    monkeypatch.setattr(api, "channel_importance", lambda *a, **k: rounds.append(1) or original(*a, **k))
    model, x, y = make("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    total = sum(g.size for g in channel_groups(model, x[:1]))
    pruner = EarlyPruner(model, "crop", 0.75, (x, y), structured=True, optimizer=optimizer, at_epoch=2)
    for epoch in (1, 2, 3):
        for _ in range(2):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        event = pruner.step(epoch)
        assert (event is not None) == (epoch == 2)
    assert len(rounds) == len(crop_it_schedule(0.75)) > 1  # rescored once per round of the schedule
    assert sum(g.size for g in channel_groups(model, x[:1])) == round(0.25 * total)
    assert pruner.event.params_after < pruner.event.params_before
    assert pruner.event.flops_after < pruner.event.flops_before
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_prune_channels_returns_its_result_and_leaves_nothing_on_the_model():
    model, x, y = make("resnet_like")
    attributes = set(vars(model))
    hooks = (len(model._forward_hooks), len(model._forward_pre_hooks))
    result = ep.prune_channels(model, "crop", 0.5, data=(x, y))
    assert set(vars(model)) == attributes and (len(model._forward_hooks), len(model._forward_pre_hooks)) == hooks
    assert isinstance(result, ep.structured.ChannelPruneResult) and result.model is model
    assert result.params_after == sum(p.numel() for p in model.parameters()) < result.params_before
    assert result.info["method"] == "crop" and result.info["schedule"] == [0.5]
    assert result.widths_after == ep.structured.layer_widths(model)


def test_settings_that_do_not_apply_are_errors_not_silent():
    model, x, y = make("vgg_like")
    for setting, value in (("scope", "layer"), ("rule", "official"), ("iterations", 3), ("on_collapse", "raise")):
        with pytest.raises(ep.PruningError, match=f"{setting} does not apply to structured pruning"):
            ep.prune_channels(model, "snip", 0.5, data=(x, y), **{setting: value})
    with pytest.raises(ep.PruningError, match="unknown option"):
        ep.prune_channels(model, "snip", 0.5, data=(x, y), temperature=3.0)
    with pytest.raises(ep.PruningError, match="use earlyprune.prune_channels"):
        ep.prune(model, "snip", 0.5, data=(x, y), structured=True)
    with pytest.raises(ep.PruningError, match="exclude names 'nope'"):
        ep.prune_channels(model, "snip", 0.5, data=(x, y), exclude=["nope"])


def test_prune_channels_scores_in_the_mode_asked():
    model, x, y = make("vgg_like")
    groups = channel_groups(model, x[:1])
    train = channel_importance(model, "snip", [(x, y)], groups)
    evaluated = channel_importance(model, "snip", [(x, y)], groups, train=False)
    assert any(not torch.allclose(train[g.index], evaluated[g.index]) for g in groups)
    result = ep.prune_channels(copy.deepcopy(model), "snip", 0.5, data=(x, y), train=False)
    assert result.params_after < result.params_before
