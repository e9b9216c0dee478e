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
* **On the channel dimension of the output**: dim 1 for convolutions and BatchNorm (N, C, H, W), the
  last dim for a Linear (N, features) or (N, sequence, features) inside a transformer. A recurrent
  layer's gate multiplies its hidden units wherever they are used (:mod:`.recurrent`).
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
from .recurrent import RECURRENT, gate_recurrent


@contextlib.contextmanager
def _no_attention_fastpath() -> Iterator[None]:
    """Transformer layers in eval mode without autograd take a fused path that skips their submodules'
    hooks (and so the gates); switch it off while gates are on."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


#: Layers whose channels are dim 1 of their output (N, C, *spatial); every other layer's (a Linear's, a
#: LayerNorm's, GPT-2's Conv1D's) are its last dim: (N, features) or (N, sequence, features).
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.PReLU)


def channel_dim(module: nn.Module, output: torch.Tensor) -> int:
    """The dimension of ``module``'s output that holds its channels."""
    return 1 if isinstance(module, _CHANNELS_FIRST) and output.dim() > 1 else output.dim() - 1


def _gate_hook(gate: torch.Tensor):
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise PruningError(f"cannot gate the channels of a {type(module).__name__} whose output is "
                               f"{type(output).__name__}, not a tensor")
        dim = channel_dim(module, output)
        if output.shape[dim] != gate.numel():
            raise PruningError(
                f"the {type(module).__name__} output has {output.shape[dim]} channels on dim {dim}, its group "
                f"{gate.numel()}: the groups were traced on another model or with other inputs"
            )
        shape = [1] * output.dim()
        shape[dim] = -1
        return output * gate.view(shape)

    return hook


def _gate(module: nn.Module, gate: torch.Tensor) -> list[Any]:
    """Hooks putting ``gate`` on ``module``'s channels; their handles."""
    if isinstance(module, RECURRENT):
        return gate_recurrent(module, gate)
    return [module.register_forward_hook(_gate_hook(gate))]


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
                handles.extend(_gate(modules[point], gate))
        with _no_attention_fastpath():
            yield gates
    finally:
        for handle in handles:
            handle.remove()
