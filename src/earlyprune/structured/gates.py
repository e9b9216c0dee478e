"""Channel gates: a multiplicative gate c on every channel of every group, for gate-gradient importance
(structured SNIP and CroP score a channel by a derivative with respect to c at c = 1)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .groups import ChannelGroup


def _gate_hook(gate: torch.Tensor):
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (output.dim() - 2)
        return output * gate.view(shape)

    return hook


@contextlib.contextmanager
def channel_gates(
    model: nn.Module, groups: list[ChannelGroup], values: dict[int, torch.Tensor] | None = None,
    requires_grad: bool = True,
) -> Iterator[dict[int, torch.Tensor]]:
    """Multiply each group's channels by a gate (ones unless ``values`` are given) inside the block.

    Yields ``{group index: gate tensor}``. Channels tied by a residual addition share one gate, applied
    at every gate point of the group, so the gate's gradient sums over the tied layers.
    """
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gates: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for group in groups:
            value = values[group.index] if values is not None else torch.ones(group.size)
            gate = value.detach().to(device=device, dtype=dtype).clone().requires_grad_(requires_grad)
            gates[group.index] = gate
            for point in group.gate_points:
                handles.append(modules[point].register_forward_hook(_gate_hook(gate)))
        yield gates
    finally:
        for handle in handles:
            handle.remove()
