"""Small shared pieces: nested batches, one-or-many batches, mode preservation, early refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune.batches import as_batches, first_example, is_batch_list, leading_dim, to_device, tree_map
from earlyprune.model_state import preserved_modes

from conftest import SmallCNN, mlp


def test_tree_map_walks_nested_inputs_and_keeps_their_structure():
    inputs = {"ids": torch.arange(6).view(3, 2), "extra": (torch.ones(3, 4), [torch.zeros(3)]), "name": "x"}
    doubled = tree_map(lambda t: t * 2, inputs)
    assert doubled["name"] == "x" and isinstance(doubled["extra"], tuple) and isinstance(doubled["extra"][1], list)
    assert torch.equal(doubled["ids"], torch.arange(6).view(3, 2) * 2)
    first = first_example(inputs)
    assert first["ids"].shape == (1, 2) and first["extra"][0].shape == (1, 4) and first["extra"][1][0].shape == (1,)
    moved = to_device(inputs, torch.device("cpu"), torch.float64)
    assert moved["ids"].dtype == torch.int64 and moved["extra"][0].dtype == torch.float64  # floats only
    assert leading_dim(inputs) == 3 and leading_dim({"a": torch.tensor(1.0), "b": torch.ones(5, 2)}) == 5


def test_one_batch_or_many_is_normalised_in_one_place():
    x, y = torch.randn(4, 3), torch.arange(4)
    assert len(as_batches((x, y))) == 1 and len(as_batches([(x, y), (x, y)])) == 2
    assert is_batch_list((x, y)) and is_batch_list([(x, y)]) and not is_batch_list(iter([(x, y)]))
    pair_of_inputs = ((x, x), y)  # a two-input model's batch is one batch, not two
    (only,) = as_batches(pair_of_inputs)
    assert only[0] is pair_of_inputs[0] and only[1] is y
    with pytest.raises(ep.PruningError, match="data is empty"):
        as_batches([])
    with pytest.raises(ep.PruningError, match="not an \\(inputs, targets\\) pair"):
        as_batches([x])


def test_preserved_modes_gives_every_submodule_its_own_mode_back():
    model = SmallCNN()
    model.train()
    model.features[1].eval()
    with preserved_modes(model, train=False):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.features[1].training and model.features[4].training
    with pytest.raises(RuntimeError), preserved_modes(model, train=True):
        raise RuntimeError("restored on error too")
    assert not model.features[1].training


def test_evaluation_keeps_a_frozen_submodule_frozen():
    from earlyprune.train import evaluate

    model = SmallCNN()
    model.train()
    model.features[1].eval()
    evaluate(model, [(torch.randn(4, *SmallCNN.input_shape), torch.arange(4))])
    assert model.training and not model.features[1].training


def test_early_pruner_refuses_an_unknown_method_or_missing_data_when_built():
    with pytest.raises(ep.PruningError, match="unknown method 'crap'"):
        ep.EarlyPruner(mlp(), "crap", 0.5, data=[(torch.randn(2, 64), torch.arange(2))])
    with pytest.raises(ep.PruningError, match="needs scoring data"):
        ep.EarlyPruner(mlp(), "crop", 0.5)
    assert ep.EarlyPruner(mlp(), "magnitude", 0.5).method.name == "magnitude"  # data-free: no data needed


def test_pruning_a_model_with_a_frozen_module_keeps_it_frozen():
    torch.manual_seed(0)
    model = mlp()
    model.train()
    model[1].eval()
    ep.prune(model, "snip", 0.5, data=(torch.randn(8, 64), torch.arange(8) % 4))
    assert model.training and not model[1].training
    assert isinstance(model[1], nn.ReLU)
