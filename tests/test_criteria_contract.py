"""The criterion contract, for every registered criterion and for one defined here alone: a criterion is
one declared object, and every entry point (score, prune, prune_channels, EarlyPruner, the CLI) uses it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune.criteria import Criterion, Scoring, register, registered, unregister
from earlyprune.structured import channel_groups, channel_importance

from conftest import TinyResNet, batch_for, mlp


# ----- a toy criterion, declared in this file only ---------------------------------------------------------


def taylor_importance(scoring: Scoring, *, power: float = 2.0) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂L/∂θ| ** power (a first-order Taylor score), summed over the batches."""
    names, params = list(scoring.params), list(scoring.params.values())
    grads = [torch.zeros_like(p) for p in params]
    for inputs, targets in scoring.batches:
        loss = scoring.loss_fn(scoring.model(inputs), targets)
        for acc, grad in zip(grads, torch.autograd.grad(loss, params)):
            acc += grad
    return {n: (p.detach() * g).abs() ** power for n, p, g in zip(names, params, grads)}


def squared_filter_importance(scoring: Scoring, *, power: float = 2.0) -> dict[int, torch.Tensor]:
    """Σ over the group's producers of ‖filter‖ ** power."""
    modules = dict(scoring.model.named_modules())
    return {g.index: sum(modules[n].weight.detach().flatten(1).norm(dim=1).double() ** power for n in g.producers)
            for g in scoring.groups}


TOY = Criterion("toy-taylor", paper="a test", summary="|θ ⊙ g| ** power", importance=taylor_importance,
                channel_importance=squared_filter_importance)


def toy_scores_by_hand(model: nn.Module, batch, power: float = 2.0) -> dict[str, torch.Tensor]:
    """The toy's formula computed directly on the model, without the library."""
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    loss = F.cross_entropy(model(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, list(weights.values()))
    return {n: (p.detach() * g).abs() ** power for (n, p), g in zip(weights.items(), grads)}


def top_k_masks(scores: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    flat = torch.cat([s.flatten().double() for s in scores.values()])
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
    return dict(zip(scores, (k.view(s.shape) for k, s in zip(kept.split([s.numel() for s in scores.values()]),
                                                              scores.values()))))


def test_toy_criterion_declares_its_options_from_the_signature():
    assert TOY.options == {"power": 2.0}
    assert TOY.structured and TOY.needs_data and TOY.train is True
    assert ep.pruning.method_options(TOY) == {"power": 2.0}


def test_toy_criterion_through_score_and_prune():
    torch.manual_seed(0)
    model = mlp()
    batch = (torch.randn(24, 64), torch.arange(24) % 4)
    expected = toy_scores_by_hand(model, batch, power=3.0)
    scores = ep.score(model, TOY, batch, power=3.0)
    for name, value in expected.items():
        torch.testing.assert_close(scores[name], value)
    masks = ep.prune(model, TOY, 0.75, data=batch, power=3.0)
    by_hand = top_k_masks(expected, round(0.25 * masks.total()))
    assert masks == by_hand
    assert masks.info["method"] == "toy-taylor" and masks.info["options"] == {"power": 3.0}
    with pytest.raises(ep.PruningError, match="unknown option.*toy-taylor.*its options: power"):
        ep.prune(mlp(), TOY, 0.5, data=batch, temperature=1.0)
    with pytest.raises(ep.PruningError, match="needs data"):
        ep.prune(mlp(), TOY, 0.5)


def test_toy_criterion_through_prune_channels():
    torch.manual_seed(0)
    model = mlp((64, 48, 32, 4))
    batch = (torch.randn(24, 64), torch.arange(24) % 4)
    hidden = [model[0].weight.detach().norm(dim=1) ** 2, model[2].weight.detach().norm(dim=1) ** 2]
    result = ep.prune_channels(model, TOY, 0.5, data=batch)
    assert result.model is model and result.info["method"] == "toy-taylor"
    assert model[0].out_features + model[2].out_features == round(0.5 * (48 + 32))
    # The kept units are the ones the toy's channel score ranks highest over both layers together.
    flat = torch.cat(hidden)
    kept = set(torch.sort(flat, descending=True, stable=True).indices[:40].tolist())
    assert set(result.kept_channels[0].tolist()) == {i for i in kept if i < 48}
    assert set(result.kept_channels[1].tolist()) == {i - 48 for i in kept if i >= 48}


@pytest.mark.parametrize("structured", [False, True])
def test_toy_criterion_through_the_early_pruner(structured):
    torch.manual_seed(0)
    model = mlp()
    batch = (torch.randn(24, 64), torch.arange(24) % 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = ep.EarlyPruner(model, TOY, 0.5, [batch], structured=structured, optimizer=optimizer, at_epoch=2,
                            schedule="exponential", power=1.0)
    for epoch in (1, 2, 3):
        optimizer.zero_grad()
        F.cross_entropy(model(batch[0]), batch[1]).backward()
        optimizer.step()
        pruner.step(epoch)
    assert pruner.event is not None and pruner.event.epoch == 2
    if structured:
        assert model[0].out_features + model[2].out_features == round(0.5 * (48 + 32))
    else:
        assert pruner.result.sparsity() == pytest.approx(0.5, abs=1e-3)
        assert pruner.result.info["options"] == {"power": 1.0}


def test_a_registered_criterion_is_known_by_name_everywhere(tmp_path):
    from earlyprune.cli import main
    from earlyprune.experiments.records import read_records

    register(TOY)
    try:
        assert "toy-taylor" in ep.methods() and "a test" in ep.methods()["toy-taylor"]
        masks = ep.prune(mlp(), "toy-taylor", 0.5, data=(torch.randn(8, 64), torch.arange(8) % 4))
        assert masks.info["method"] == "toy-taylor"
        out = tmp_path / "runs.jsonl"
        code = main(["run", "--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--method",
                     "toy-taylor", "--sparsity", "0.8", "--epochs", "1", "--train-subset", "200", "--device", "cpu",
                     "--option", "power=1", "--out", str(out)])
        assert code == 0
        (record,) = list(read_records(out))
        assert record["method"] == "toy-taylor" and record["options"] == {"power": 1}
        assert record["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
        with pytest.raises(ep.PruningError, match="already registered"):
            register(Criterion("toy-taylor", paper="another", importance=taylor_importance))
    finally:
        unregister("toy-taylor")
    assert "toy-taylor" not in ep.methods()


def test_criterion_declarations_are_checked():
    def no_default(scoring, *, power):
        return {}

    def positional_option(scoring, power=2.0):
        return {}

    def var_keywords(scoring, **options):
        return {}

    for bad in (no_default, positional_option, var_keywords):
        with pytest.raises(ep.PruningError, match="criterion 'bad'"):
            Criterion("bad", paper="x", importance=bad)
    with pytest.raises(ep.PruningError, match="data must be one of"):
        Criterion("bad", paper="x", importance=taylor_importance, data="lots")
    with pytest.raises(ep.PruningError, match="lower-case"):
        Criterion("Bad", paper="x", importance=taylor_importance)


def test_what_a_criterion_returns_is_checked():
    def wrong_shape(scoring):
        return {n: torch.ones(3) for n in scoring.params}

    def missing(scoring):
        return {}

    model = mlp()
    for fn, message in ((wrong_shape, "returned importance of shape"), (missing, "returned no importance")):
        with pytest.raises(ep.PruningError, match=message):
            ep.score(model, Criterion("broken", paper="x", importance=fn, data="none"))


def test_the_extending_guide_runs_as_written():
    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, "docs/extending.md", "exec"), namespace)
        assert namespace["masks"].sparsity() == pytest.approx(0.8, abs=1e-3)
        assert sum(namespace["shrunk"].widths_after.values()) == round(0.5 * 16) + 4
        assert namespace["scores"]["0.weight"].shape == (16, 20)
    finally:
        unregister("gradient")


# ----- the contract, for every registered criterion and the toy -------------------------------------------

CONTRACT = [*registered(), "toy"]


def criterion_named(name: str):
    return TOY if name == "toy" else name


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_scores_have_the_parameter_shapes_and_are_finite(name):
    torch.manual_seed(0)
    model = TinyResNet()
    scores = ep.score(model, criterion_named(name), batch_for(TinyResNet.input_shape))
    params = ep.prunable.prunable_parameters(model)
    assert list(scores) == list(params)
    for n, p in params.items():
        assert scores[n].shape == p.shape and bool(torch.isfinite(scores[n]).all()), n


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_scoring_leaves_everything_as_it_was(name):
    torch.manual_seed(0)
    model = TinyResNet()
    model.bn1.eval()  # mixed modes: each must come back as it was
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    ep.score(model, criterion_named(name), batch_for(TinyResNet.input_shape))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_scores_under_masks_are_zero_where_pruned_and_agree_with_applied_masks(name):
    torch.manual_seed(0)
    model = TinyResNet()
    batch = batch_for(TinyResNet.input_shape)
    generator = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=generator) > 0.4
             for n, p in ep.prunable.prunable_parameters(model).items()}
    explicit = ep.score(model, criterion_named(name), batch, masks=masks)
    for n, mask in masks.items():
        assert torch.all(explicit[n][~mask] == 0), n
    ep.Masks(masks).apply(model)  # the same masks, applied: score sees them without being told
    applied = ep.score(model, criterion_named(name), batch)
    for n in masks:
        torch.testing.assert_close(applied[n], explicit[n])


STRUCTURED = [n for n, c in registered().items() if c.structured] + ["toy"]


@pytest.mark.parametrize("name", STRUCTURED)
def test_contract_channel_scores_have_the_group_sizes_are_finite_and_leave_the_model(name):
    torch.manual_seed(0)
    model = TinyResNet()
    batch = batch_for(TinyResNet.input_shape)
    groups = channel_groups(model, batch[0][:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = channel_importance(model, criterion_named(name), [batch], groups)
    assert sorted(scores) == sorted(g.index for g in groups)
    for g in groups:
        assert scores[g.index].shape == (g.size,) and bool(torch.isfinite(scores[g.index]).all())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_criterion_without_a_structured_form_is_refused_by_prune_channels():
    with pytest.raises(ep.PruningError, match="'grasp' has no structured form; structured methods: random"):
        ep.prune_channels(TinyResNet(), "grasp", 0.5, data=batch_for(TinyResNet.input_shape))

