"""Channel gates: a multiplicative gate c on every channel of every group, for gate-gradient importance.

Structured SNIP and CroP (Rachwan et al., "Winning the Lottery Ahead of Time: Efficient Early Network
Pruning", ICML 2022) score a channel by a derivative with respect to a gate c on its output, at c = 1.

Where the gate sits, and why:

* **After the BatchNorm that follows a conv**, not on the conv output. In training mode a gate before
  BatchNorm is normalised away (BN(c·z) = BN(z) for any c > 0, so ∂L/∂c ≈ 0). The official EarlyCroP
  code puts the gate on the conv output but scores in eval mode, where BatchNorm is a fixed affine map;
  there a gate of 0 still leaves the BatchNorm's shift β − γμ/σ, whereas removing the channel (what
  :func:`~earlyprune.structured.shrink` does) removes the BatchNorm channel too and gives exactly zero.
  After the BatchNorm, a gate of 0 *is* the surgery, in either mode, so the score measures the change
  that is really made. Without a BatchNorm the gate sits on the producer's output (bias included).
* **Residual-tied groups: one gate tensor on each producer's output** (each block's last BatchNorm and the
  stem or projection shortcut), not after the additions. Every producer's contribution is then gated
  exactly once — gating after each addition would gate the identity path again, c² and worse down a
  stage — a gate of 0 zeroes the channel through the whole stage, as the surgery does, and ∂/∂c sums
  the contributions of all tied layers. (The official code gates each conv separately and re-ties the
  residual layers' selections by hand per architecture; a shared gate needs no per-architecture code.)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import PruningError
from .groups import ChannelGroup, GroupPlan, as_groups


def _gate_hook(gate: torch.Tensor):
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (output.dim() - 2)
        return output * gate.view(shape)

    return hook


@contextlib.contextmanager
def channel_gates(
    model: nn.Module,
    groups: GroupPlan | Sequence[ChannelGroup],
    values: Mapping[int, torch.Tensor] | None = None,
    requires_grad: bool = True,
) -> Iterator[dict[int, torch.Tensor]]:
    """Multiply each group's channels by a gate inside the block; yields ``{group index: gate}``.

    Gates are ones (``requires_grad`` by default, so ∂/∂c at c = 1 can be taken) unless ``values`` gives
    some groups other values (e.g. 0 on the channels to be removed). Channels tied by a residual addition
    share one gate tensor, applied at every gate point of the group, so its gradient sums over the tied
    layers. All hooks are removed on exit, also on error.
    """
    groups = as_groups(groups)
    modules = dict(model.named_modules())
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    gates: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for group in groups:
            value = values.get(group.index) if values is not None else None
            if value is None:
                value = torch.ones(group.size)
            if tuple(value.shape) != (group.size,):
                raise PruningError(
                    f"gate of group {group.index} must have shape ({group.size},), got {tuple(value.shape)}"
                )
            gate = value.detach().to(device=device, dtype=dtype).clone().requires_grad_(requires_grad)
            gates[group.index] = gate
            for point in group.gate_points:
                if point not in modules:
                    raise PruningError(
                        f"gate point {point!r} is not in the model: were the groups traced on another model?"
                    )
                handles.append(modules[point].register_forward_hook(_gate_hook(gate)))
        yield gates
    finally:
        for handle in handles:
            handle.remove()
