"""Masks as values and their binding on the module: copies, pickles, several models, device/dtype moves."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune.masking import applied_masks, binding

from conftest import SmallCNN, batch_for, mlp


def sgd_steps(model: nn.Module, steps: int = 3, lr: float = 0.5, momentum: float = 0.9, seed: int = 1) -> None:
    """A few SGD steps with momentum on random data: large enough to move every unmasked weight."""
    x, y = batch_for(SmallCNN.input_shape, seed=seed) if isinstance(model, SmallCNN) else (
        torch.randn(16, 64, generator=torch.Generator().manual_seed(seed)), torch.arange(16) % 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def pruned_entries_are_zero(model: nn.Module, masks: ep.Masks) -> bool:
    params = dict(model.named_parameters())
    return all(bool(torch.all(params[n][~m.to(params[n].device)] == 0)) for n, m in masks.items())


def test_a_deep_copy_of_a_masked_model_stays_pruned_through_training():
    torch.manual_seed(0)
    model = SmallCNN()
    masks = ep.prune(model, "random", 0.5)
    twin = copy.deepcopy(model)
    sgd_steps(twin)
    assert pruned_entries_are_zero(twin, masks)
    assert applied_masks(twin) is not None and applied_masks(twin) == masks
    sgd_steps(model)  # the original is still enforced too, independently of the copy
    assert pruned_entries_are_zero(model, masks)


def test_masks_applied_to_a_second_model_keep_the_first_pruned():
    torch.manual_seed(0)
    a, b = mlp(), mlp()
    masks = ep.prune(a, "magnitude", 0.5)
    other = masks.apply(b)
    assert other.model is b and applied_masks(a) is masks and applied_masks(b) is masks
    sgd_steps(a)
    sgd_steps(b)
    assert pruned_entries_are_zero(a, masks) and pruned_entries_are_zero(b, masks)
    other.remove()  # removing b's binding leaves a's alone
    assert applied_masks(b) is None and applied_masks(a) is masks
    sgd_steps(a)
    sgd_steps(b)
    assert pruned_entries_are_zero(a, masks) and not pruned_entries_are_zero(b, masks)


def test_a_pickled_masked_model_stays_pruned_after_unpickling():
    torch.manual_seed(0)
    model = SmallCNN()
    masks = ep.prune(model, "random", 0.7)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # our own object in this test, so a full unpickle is safe here
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    sgd_steps(loaded)
    assert pruned_entries_are_zero(loaded, masks)
    again = pickle.loads(pickle.dumps(model))
    sgd_steps(again)
    assert pruned_entries_are_zero(again, masks)


def test_binding_adds_nothing_to_state_dict_buffers_or_parameters():
    torch.manual_seed(0)
    model = SmallCNN()
    keys = list(model.state_dict())
    buffers = [n for n, _ in model.named_buffers()]
    params = [n for n, _ in model.named_parameters()]
    ep.prune(model, "random", 0.5)
    assert list(model.state_dict()) == keys
    assert [n for n, _ in model.named_buffers()] == buffers
    assert [n for n, _ in model.named_parameters()] == params


def test_weights_written_in_place_are_masked_again_before_the_next_forward():
    torch.manual_seed(0)
    model = mlp()
    dense = copy.deepcopy(model.state_dict())
    masks = ep.prune(model, "magnitude", 0.6)
    model.load_state_dict(dense)  # dense weights copied over the pruned ones
    assert not pruned_entries_are_zero(model, masks)
    model(torch.randn(2, 64))
    assert pruned_entries_are_zero(model, masks)


def test_forward_output_equals_the_hand_pruned_network_after_load_state_dict():
    torch.manual_seed(0)
    model = mlp()
    dense = copy.deepcopy(model.state_dict())
    masks = ep.prune(model, "magnitude", 0.6)
    model.load_state_dict(dense)
    reference = mlp()
    reference.load_state_dict(dense)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    x = torch.randn(5, 64)
    torch.testing.assert_close(model(x), reference(x))


def test_masks_follow_a_dtype_and_device_move():
    torch.manual_seed(0)
    model = SmallCNN()
    masks = ep.prune(model, "random", 0.5)
    model.double()
    x, y = batch_for(SmallCNN.input_shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x.double()), y).backward()
        optimizer.step()
    assert pruned_entries_are_zero(model, masks)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_removed_binding_stops_enforcement_and_rebinding_replaces_masks():
    torch.manual_seed(0)
    model = mlp()
    first = ep.prune(model, "magnitude", 0.5)
    bound = binding(model)
    assert bound is not None and bound.masks is first
    second = ep.Masks({n: torch.rand(m.shape) > 0.3 for n, m in first.items()})
    second.apply(model)  # replaces the first binding
    assert applied_masks(model) is second
    sgd_steps(model)
    assert pruned_entries_are_zero(model, second)
    binding(model).remove()
    assert binding(model) is None and not bound.active
    sgd_steps(model)
    assert not pruned_entries_are_zero(model, second)


def test_masks_are_values_with_equality_and_slicing():
    a = ep.Masks({"w": torch.tensor([[True, False, True], [False, True, True]])})
    b = ep.Masks({"w": torch.tensor([[True, False, True], [False, True, True]])}, info={"other": 1})
    assert a == b and a != ep.Masks({"w": torch.ones(2, 3, dtype=torch.bool)})
    sliced = a.slice({"w": {1: torch.tensor([0, 2])}})
    assert torch.equal(sliced["w"], torch.tensor([[True, True], [False, True]]))
    assert a["w"].shape == (2, 3)  # the original value is unchanged


def test_attach_refuses_an_optimizer_of_another_model():
    model, other = mlp(), mlp()
    ep.prune(model, "magnitude", 0.5)
    with pytest.raises(ep.PruningError, match="holds none of the masked parameters"):
        binding(model).attach(torch.optim.SGD(other.parameters(), lr=0.1))


def test_masks_of_other_values_than_zero_and_one_are_refused(tmp_path):
    with pytest.raises(ep.PruningError, match="values other than 0 and 1"):
        ep.Masks({"w": torch.tensor([0.3, 1.0])})
    path = tmp_path / "float.pt"
    torch.save({"format": "earlyprune.masks/1", "masks": {"w": torch.tensor([0.3, 0.7])}, "info": {}}, path)
    with pytest.raises(ep.PruningError, match="values other than 0 and 1"):
        ep.Masks.load(path)
    assert ep.Masks({"w": torch.tensor([0.0, 1.0])})["w"].tolist() == [False, True]
