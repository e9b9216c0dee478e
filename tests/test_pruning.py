"""ep.prune / ep.score: exact sparsity for every method, selection rules, schedules, collapse, bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune.schedules import crop_it_schedule, exponential_schedule
from earlyprune.selection import select

from conftest import SmallCNN, TinyResNet, batch_for, mlp

ALL_METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"]


class ConvMLP(nn.Module):
    """~10k prunable weights so that 99.9% sparsity keeps a countable handful."""

    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 16, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99, 0.999])
def test_exact_sparsity_for_every_method(method, sparsity):
    torch.manual_seed(0)
    model = ConvMLP()
    data = batch_for(ConvMLP.input_shape, n=16)
    options = {"iterations": 10} if method == "synflow" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # collapse is reported, not the subject here
        masks = ep.prune(model, method, sparsity, data=data, on_collapse="warn", **options)
    total = masks.total()
    assert total == 72 + 8192 + 256
    assert masks.kept() == round((1 - sparsity) * total)
    # The model's weights agree with the masks: exactly the kept ones may be non-zero.
    params = dict(model.named_parameters())
    zeros = sum(int((params[n] == 0).sum()) for n in masks)
    assert zeros >= total - masks.kept()
    assert all(torch.all(params[n][~m] == 0) for n, m in masks.items())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_scoring_leaves_model_untouched(method):
    torch.manual_seed(0)
    model = TinyResNet()
    model.train()
    model.bn1.eval()  # a mixed-mode model: every flag must come back as it was
    x, y = batch_for(TinyResNet.input_shape)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    ep.score(model, method, (x, y))
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_global_vs_layer_scope():
    torch.manual_seed(0)
    model = ConvMLP()
    masks = ep.prune(model, "magnitude", 0.8, scope="layer")
    for stat in masks.layer_stats():
        assert stat.kept == round(0.2 * stat.total)


def test_ties_are_broken_deterministically_by_position():
    importance = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    masks, _ = select(importance, 0.5)
    assert masks["a"].tolist() == [True] * 5 + [False] and masks["b"].tolist() == [False] * 4


def test_official_rule_prunes_every_score_at_or_below_the_threshold():
    importance = {"w": torch.tensor([1.0, 2.0, 2.0, 2.0, 5.0, 6.0])}
    topk, _ = select(importance, 0.5)
    official, _ = select(importance, 0.5, rule="official")
    assert int(topk["w"].sum()) == 3
    assert official["w"].tolist() == [False, False, False, False, True, True]  # ties at 2.0 all go


def test_previously_pruned_weights_stay_pruned():
    importance = {"w": torch.tensor([9.0, 8.0, 1.0, 2.0])}
    current = {"w": torch.tensor([False, True, True, True])}
    masks, _ = select(importance, 0.5, current=current)
    assert masks["w"].tolist() == [False, True, False, True]


def test_layer_collapse_is_detected_raised_or_kept_at_a_minimum():
    importance = {"small": torch.full((10,), 0.01), "big": torch.arange(1.0, 91.0)}
    masks, collapsed = select(importance, 0.5)
    assert collapsed == ["small"] and not bool(masks["small"].any())
    with pytest.raises(ep.LayerCollapseError, match="small"):
        select(importance, 0.5, on_collapse="raise")
    kept, collapsed = select(importance, 0.5, on_collapse="keep_min", min_per_layer=2)
    assert collapsed == [] and int(kept["small"].sum()) == 2
    assert int(kept["small"].sum() + kept["big"].sum()) == 50  # still exact
    assert not bool(kept["big"][:42].any())  # the least important of 'big' gave way


def collapsing_mlp():
    torch.manual_seed(0)
    model = mlp((32, 16, 4))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # the first layer has the smallest weights: magnitude removes it
    return model


def test_prune_reports_collapse_in_the_record_and_a_warning():
    with pytest.warns(RuntimeWarning, match="layer collapse.*0.weight"):
        masks = ep.prune(collapsing_mlp(), "magnitude", 0.95, on_collapse="warn")
    assert masks.info["collapsed"] == ["0.weight"]
    with pytest.raises(ep.LayerCollapseError):
        ep.prune(collapsing_mlp(), "magnitude", 0.95, on_collapse="raise")
    kept = ep.prune(collapsing_mlp(), "magnitude", 0.95, on_collapse="keep_min", min_per_layer=3)
    assert kept.info["collapsed"] == [] and int(kept["0.weight"].sum()) == 3


def test_schedules():
    assert exponential_schedule(0.99, 2) == pytest.approx([1 - 0.1, 0.99])
    assert crop_it_schedule(0.98) == pytest.approx([0.5, 0.74, 0.86, 0.92, 0.95, 0.965, 0.98])
    assert crop_it_schedule(0.3) == [0.3]


def test_iterative_rescoring_differs_from_one_shot_and_reaches_target():
    torch.manual_seed(0)
    base = ConvMLP()
    data = batch_for(ConvMLP.input_shape, n=32)
    one = ConvMLP()
    one.load_state_dict(base.state_dict())
    it = ConvMLP()
    it.load_state_dict(base.state_dict())
    m_one = ep.prune(one, "snip", 0.98, data=data)
    m_it = ep.prune(it, "snip-it", 0.98, data=data)
    assert m_it.kept() == m_one.kept()
    assert m_it.info["schedule"] == pytest.approx(crop_it_schedule(0.98))
    assert any(not torch.equal(m_one[n], m_it[n]) for n in m_one)


def test_synflow_runs_100_rounds_by_default_and_offers_the_official_rule():
    torch.manual_seed(0)
    model = ConvMLP()
    masks = ep.prune(model, "synflow", 0.99)  # data-free: input shape from the model
    assert len(masks.info["schedule"]) == 100 and masks.info["rule"] == "topk"
    model2 = ConvMLP()
    masks2 = ep.prune(model2, "synflow", 0.99, rule="official", iterations=20)
    # The SynFlow code prunes k = int(s * N) weights (no ties among continuous scores): one more kept here.
    assert masks2.info["rule"] == "official"
    assert masks2.kept() == masks2.total() - int(0.99 * masks2.total()) == masks.kept() + 1


def test_prune_from_a_loader_draws_class_balanced_set_for_grasp():
    torch.manual_seed(0)
    model = ConvMLP()
    # Imbalanced labels: mostly class 0; class 3 appears only in the first batch, so a sampler that lost
    # the first batch of this one-pass iterator (or took the first 40 examples) could not be balanced.
    y = torch.zeros(200, dtype=torch.long)
    y[:10] = 3
    y[50:60], y[120:130] = 1, 2
    x = torch.arange(200, dtype=torch.float32).view(200, 1, 1, 1).expand(200, 1, 8, 8).clone()  # x encodes its index
    loader = [(x[i : i + 25], y[i : i + 25]) for i in range(0, 200, 25)]
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0][:, 0, 0, 0].long()))
    ep.prune(model, "grasp", 0.9, data=iter(loader), samples_per_class=10)
    scored = [ids for ids in seen if ids.numel() == 20]
    assert scored, "GraSP should score two halves of 20 examples, as the official code does"
    halves = scored[:2]
    labels = [y[ids].tolist() for ids in halves]
    # Sorted by class, split in two halves: classes 0 and 1 in the first, 2 and 3 in the second.
    assert labels[0] == [0] * 10 + [1] * 10 and labels[1] == [2] * 10 + [3] * 10
    # The first 10 of each class in loader order.
    assert halves[0][:10].tolist() == list(range(10, 20))
    assert halves[1][10:].tolist() == list(range(10))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_scores_under_explicit_masks_equal_the_scores_of_the_zeroed_model(method):
    torch.manual_seed(0)
    model = ConvMLP()
    data = batch_for(ConvMLP.input_shape, n=16)
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters() if n.endswith("weight")
             and p.dim() > 1}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    under_masks = ep.score(model, method, data, masks=masks)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "scoring changed the weights"
    zeroed = ConvMLP()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, p in zeroed.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    # GraSP and CroP also restrict g to the surviving weights under masks (Hg with the masked gradient),
    # ProsPr its inner SGD steps, so their reference is the zeroed model scored under the same masks (before
    # the forward pass was masked too, even that differed); the others need no masks there.
    restricted = method in ("grasp", "crop", "prospr")
    reference = ep.score(zeroed, method, data, masks=masks if restricted else None)
    for name, mask in masks.items():
        assert torch.all(under_masks[name][~mask] == 0), f"{method}: pruned weights of {name} must score 0"
        torch.testing.assert_close(under_masks[name][mask], reference[name][mask], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["snip-it", "crop-it"])
@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_exact_sparsity_for_the_iterative_variants(method, sparsity):
    torch.manual_seed(0)
    model = ConvMLP()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        masks = ep.prune(model, method, sparsity, data=batch_for(ConvMLP.input_shape, n=16))
    assert masks.kept() == round((1 - sparsity) * masks.total())
    assert masks.info["schedule"] == crop_it_schedule(sparsity) and len(masks.info["schedule"]) > 1


def test_tied_weights_are_scored_pruned_and_stay_zero_through_training():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.shared = nn.Linear(16, 16)
            self.out = nn.Linear(16, 4)

        def forward(self, x):  # the shared layer is applied twice
            return self.out(torch.relu(self.shared(torch.relu(self.shared(torch.relu(self.inp(x)))))))

    torch.manual_seed(0)
    model = Tied()
    x, y = torch.randn(32, 8), torch.arange(32) % 4
    snip = ep.score(model, "snip", (x, y))
    # Independent route: autograd through both uses of the shared weight.
    loss = nn.functional.cross_entropy(model(x), y)
    grad = torch.autograd.grad(loss, model.shared.weight)[0]
    torch.testing.assert_close(snip["shared.weight"], (grad * model.shared.weight).abs().detach())
    masks = ep.prune(model, "snip", 0.8, data=(x, y))
    assert masks.kept() == round(0.2 * masks.total())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert torch.all(model.shared.weight[~masks["shared.weight"]] == 0)


def test_more_bad_input_gets_clear_errors():
    model = ConvMLP()
    data = batch_for(ConvMLP.input_shape, n=16)
    with pytest.raises(ep.PruningError, match="temperature must be a number > 0"):
        ep.prune(model, "grasp", 0.5, data=data, temperature=0)
    with pytest.raises(ep.PruningError, match="temperature"):
        ep.score(model, "grasp", data, temperature=-1.0)
    with pytest.raises(ep.PruningError, match="iterations must be an integer"):
        ep.prune(model, "synflow", 0.5, iterations=2.5)
    with pytest.raises(ep.PruningError, match="steps must be an integer"):
        ep.score(model, "prospr", data, steps=1.5)
    with pytest.raises(ep.PruningError, match="iterations does not apply to 'snip-it'"):
        ep.prune(model, "snip-it", 0.5, data=data, iterations=3)
    with pytest.raises(ep.PruningError, match="needs rule='topk'"):
        ep.prune(model, "magnitude", 0.5, rule="official", on_collapse="keep_min")
    with pytest.raises(ep.PruningError, match=r"targets range over \[0, 9\] but the model gives 4 outputs"):
        ep.score(model, "snip", (data[0], torch.arange(16) % 10))
    # Numbers of any real type are sparsities.
    import numpy as np

    assert ep.prune(ConvMLP(), "magnitude", np.float32(0.5)).sparsity() == pytest.approx(0.5, abs=1e-3)
    assert ep.prune(ConvMLP(), "magnitude", torch.tensor(0.25)).sparsity() == pytest.approx(0.25, abs=1e-3)
    # Masks only remove weights: less sparsity than the model already has is refused, not ignored.
    ep.prune(model, "magnitude", 0.9)
    with pytest.raises(ep.PruningError, match="below the 0.9"):
        ep.prune(model, "magnitude", 0.5)
    assert ep.prune(model, "magnitude", 0.95).sparsity() == pytest.approx(0.95, abs=1e-3)


def test_bad_input_gets_clear_errors():
    model = SmallCNN()
    data = batch_for(SmallCNN.input_shape)
    for bad in [-0.1, 1.0, 1.5, float("nan"), "0.5", None]:
        with pytest.raises(ep.PruningError, match="sparsity"):
            ep.prune(model, "random", bad)
    with pytest.raises(ep.PruningError, match="known methods: random, magnitude, snip, .*snip-it, crop-it, activation_density"):
        ep.prune(model, "snap", 0.5, data=data)
    with pytest.raises(ep.PruningError, match="no parameters"):
        ep.prune(nn.Sequential(nn.ReLU()), "random", 0.5)
    with pytest.raises(ep.PruningError, match="no prunable parameters"):
        ep.prune(nn.Sequential(nn.BatchNorm1d(4)), "random", 0.5)
    with pytest.raises(ep.PruningError, match="data is empty"):
        ep.prune(model, "snip", 0.5, data=[])
    with pytest.raises(ep.PruningError, match="needs data"):
        ep.prune(model, "snip", 0.5)
    with pytest.raises(ep.PruningError, match="unknown option"):
        ep.prune(model, "snip", 0.5, data=data, temperature=3)
    with pytest.raises(ep.PruningError, match="NaN"):
        select({"w": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ep.PruningError, match="infinite"):
        select({"w": torch.tensor([1.0, float("inf")])}, 0.5)
    broken = SmallCNN()
    with torch.no_grad():
        broken.classifier.weight[0, 0] = float("nan")
    with pytest.raises(ep.PruningError, match="loss on the scoring data is nan"):
        ep.prune(broken, "snip", 0.5, data=data)


def test_methods_lists_every_method_with_its_paper():
    listed = ep.methods()
    for name in ALL_METHODS + ["snip-it", "crop-it", "activation_density"]:
        assert name in listed
    assert "ICLR 2020" in listed["grasp"] and "NeurIPS 2020" in listed["synflow"]


def test_masks_on_a_residual_network_keep_it_running():
    torch.manual_seed(0)
    model = TinyResNet()
    masks = ep.prune(model, "crop", 0.9, data=batch_for(TinyResNet.input_shape))
    assert "shortcut.0.weight" in masks
    out = model(torch.randn(3, *TinyResNet.input_shape))
    assert out.shape == (3, 4) and torch.isfinite(out).all()
