"""Masks to and from torch.nn.utils.prune and torch.ao.pruning: identical masks both ways, the same outputs,
plain models afterwards, and a clear error for a torch-pruned model given to earlyprune."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import earlyprune as ep
from earlyprune import models
from earlyprune.errors import PruningError


def _torch_pruned_lenet():
    torch.manual_seed(0)
    model = models.create("lenet5")
    prune.l1_unstructured(model.get_submodule(_layer(model, 0)), "weight", amount=0.6)
    prune.random_unstructured(model.get_submodule(_layer(model, 1)), "weight", amount=0.3)
    prune.random_unstructured(model.get_submodule(_layer(model, 1)), "weight", amount=0.3)  # a PruningContainer
    prune.l1_unstructured(model.get_submodule(_layer(model, -1)), "bias", amount=0.5)
    return model


def _layer(model, index):
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return names[index]


def test_from_torch_prune_reads_the_masks_and_makes_the_model_plain():
    model = _torch_pruned_lenet()
    expected = {f"{n}.{b[:-5]}": t.bool().clone() for n, m in model.named_modules()
                for b, t in m.named_buffers(recurse=False) if b.endswith("_mask")}
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        out_before = model(x)
    masks = ep.Masks.from_torch_prune(model)
    assert set(masks) == set(expected) and len(masks) == 3
    assert all(torch.equal(masks[n], expected[n]) for n in expected)
    # plain again: every tensor a Parameter, no *_orig / *_mask, no pruning hooks, the same function
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("_orig") for n in names) and not list(model.buffers())
    assert all(isinstance(model.get_parameter(n), nn.Parameter) for n in masks)
    with torch.no_grad():
        assert torch.equal(model(x), out_before)
    assert all(bool((model.get_parameter(n)[~m] == 0).all()) for n, m in masks.items())


def test_round_trip_gives_identical_masks_and_outputs():
    torch.manual_seed(0)
    model = models.create("lenet300")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masks = ep.prune(model, "magnitude", 0.9)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
    masks.to_torch_prune(model)
    for name, mask in masks.items():
        prefix, _, attribute = name.rpartition(".")
        module = model.get_submodule(prefix)
        assert torch.equal(getattr(module, attribute + "_mask").bool(), mask)
        assert isinstance(getattr(module, attribute + "_orig"), nn.Parameter)
    with torch.no_grad():
        assert torch.equal(model(x), out)
    back = ep.Masks.from_torch_prune(model)
    assert back == masks
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_torch_ao_pruning_parametrizations():
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=4)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    mask = model[0].parametrizations.weight[0].mask.bool().clone()
    x = torch.randn(5, 8)
    with torch.no_grad():
        out = model(x)
    masks = ep.Masks.from_torch_prune(model)
    assert list(masks) == ["0.weight"] and torch.equal(masks["0.weight"], mask)
    assert masks.sparsity() == pytest.approx(0.5)
    assert sorted(n for n, _ in model.named_parameters()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert isinstance(model[0].weight, nn.Parameter)
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_earlyprune_refuses_a_torch_pruned_model_naming_the_fix():
    model = _torch_pruned_lenet()
    with pytest.raises(PruningError, match="Masks.from_torch_prune"):
        ep.prune(model, "magnitude", 0.5)
    with pytest.raises(PruningError, match="Masks.from_torch_prune"):
        ep.score(model, "magnitude")
    with pytest.raises(PruningError, match="Masks.from_torch_prune"):
        ep.prune_channels(model, "snip", 0.5, data=(torch.randn(4, 1, 28, 28), torch.arange(4)))
    masks = ep.Masks.from_torch_prune(model)
    masks.apply(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = ep.prune(model, "magnitude", 0.5)  # plain now: prunes
    assert again.sparsity() == pytest.approx(0.5, abs=1e-3)


def test_unpruned_model_and_bad_masks_are_refused():
    with pytest.raises(PruningError, match="no tensor pruned"):
        ep.Masks.from_torch_prune(nn.Linear(2, 2))
    with pytest.raises(PruningError, match="does not have"):
        ep.Masks({"nope.weight": torch.ones(2, 2)}).to_torch_prune(nn.Linear(2, 2))
