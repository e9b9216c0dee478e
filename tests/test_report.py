"""ep.report: parameters, non-zero parameters, dense and effective FLOPs, by hand on a tiny net."""

from __future__ import annotations

import torch
from torch import nn

import earlyprune as ep


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))


def test_report_counts_by_hand():
    model = tiny()
    rep = ep.report(model, input_shape=(1, 5, 5))
    # conv: 2 out x 3x3 positions, each a 1x3x3 dot product: 2 * 18 * 9 multiply-adds.
    conv_flops, fc_flops = 2 * 18 * 9, 2 * 18 * 3
    layers = {layer.name: layer for layer in rep.layers}
    assert layers["0"].flops == conv_flops and layers["3"].flops == fc_flops
    assert rep.flops == conv_flops + fc_flops
    assert rep.params == (18 + 2) + (54 + 3)
    assert rep.nonzero == rep.params
    assert rep.effective_flops == rep.flops


def test_effective_flops_follow_masks_and_a_batch_is_divided_out():
    model = tiny()
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[:, :6] = True  # a third of the linear layer kept
    ep.Masks({"3.weight": mask}).apply(model)
    rep = ep.report(model, example_inputs=torch.randn(4, 1, 5, 5))
    layers = {layer.name: layer for layer in rep.layers}
    assert layers["3"].nonzero == 18 + 3 and layers["3"].effective_flops == 2 * 18 * 3 // 3
    assert layers["0"].effective_flops == 2 * 18 * 9
    assert rep.effective_flops == 2 * 18 * 9 + 36
    assert rep.nonzero == rep.params - 36
    table = str(rep)
    assert "total" in table and "Linear" in table and "compression" in table
    d = rep.as_dict()
    assert d["params"] == rep.params and d["layers"][1]["effective_flops"] == 36


def test_report_without_input_gives_sizes_and_no_flops():
    rep = ep.report(tiny())
    assert rep.flops is None and rep.params == 77
    assert "-" in str(rep)


def test_a_module_with_its_own_parameters_and_children_is_counted_once_and_dict_batches_divide_out():
    class Block(nn.Module):
        """Own parameter (a learned offset, like a class token) beside a child layer."""

        def __init__(self):
            super().__init__()
            self.offset = nn.Parameter(torch.zeros(6))
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x + self.offset)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = nn.Linear(6, 3)

        def forward(self, batch):
            return self.head(self.block(batch["x"]))

    rep = ep.report(Net(), example_inputs={"x": torch.ones(5, 6)})
    layers = {layer.name: layer for layer in rep.layers}
    # By hand, per example: fc 2*6*6 = 72, head 2*6*3 = 36; the block itself does no matmul.
    assert layers["block.fc"].flops == 72 and layers["head"].flops == 36 and layers["block"].flops == 0
    assert rep.flops == 108 and rep.effective_flops == 108
