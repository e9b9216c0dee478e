"""Hidden units of LSTM/GRU/RNN layers: their surgery (a torch-pruning pruner) and their channel gate.

A recurrent layer's hidden unit j is one row in every gate block of ``weight_ih_l*``/``weight_hh_l*``
and their biases (4 blocks for an LSTM: i, f, g, o; 3 for a GRU: r, z, n; 1 for an RNN), the column j of
every ``weight_hh_l*`` (the recurrence), the column j of ``weight_ih_l{k}`` for k >= 1 (the layer below's
output) and unit j of the outputs. ``hidden_size`` is one number for all of a layer's stacked layers, so
unit j goes in every stacked layer at once.

torch-pruning 1.6's own LSTM pruner slices ``weight_hh_l0``'s rows without the gate blocks and handles one
stacked layer only; :class:`RecurrentUnitPruner` replaces it (and covers GRU and RNN). Bidirectional
layers and LSTMs with ``proj_size`` are not pruned by hidden unit (their outputs interleave directions
or projections; they are left whole, see :func:`unsupported_reason`).

The gate of unit j (:func:`gate_recurrent`) multiplies h_j wherever it is used: in the recurrence (column
j of ``weight_hh_l*``), as input of the next stacked layer (column j of ``weight_ih_l{k}``), and in every
output (the output sequence, h_n, and an LSTM's c_n). A gate of 0 is then exactly the surgery, and ∂L/∂c
at c = 1 sums the unit's contributions through time and to the layers above.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


def gate_blocks(layer: nn.RNNBase) -> int:
    """How many gate blocks of ``hidden_size`` rows each weight has (LSTM 4, GRU 3, RNN 1)."""
    return {"LSTM": 4, "GRU": 3}.get(layer.mode, 1)


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why the hidden units of ``layer`` cannot be pruned, or None when they can."""
    if not isinstance(layer, RECURRENT):
        return None
    if layer.bidirectional:
        return "bidirectional recurrent layers are not pruned by hidden unit"
    if getattr(layer, "proj_size", 0):
        return "an LSTM with proj_size is not pruned by hidden unit"
    return None


class RecurrentUnitPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning pruner for nn.LSTM/GRU/RNN: output channels are hidden units, input channels the
    features of the input (``weight_ih_l0``'s columns)."""

    TARGET_MODULES = RECURRENT

    def prune_out_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.Module:
        reason = unsupported_reason(layer)
        if reason is not None:
            from ..errors import PruningError

            raise PruningError(f"{reason} ({type(layer).__name__})")
        hidden = layer.hidden_size
        removed = set(int(i) for i in idxs)
        keep = torch.tensor(sorted(set(range(hidden)) - removed), dtype=torch.long)
        rows = torch.cat([keep + block * hidden for block in range(gate_blocks(layer))])
        for k in range(layer.num_layers):
            self._set(layer, f"weight_ih_l{k}", rows, 0)
            if k > 0:
                self._set(layer, f"weight_ih_l{k}", keep, 1)
            self._set(layer, f"weight_hh_l{k}", rows, 0)
            self._set(layer, f"weight_hh_l{k}", keep, 1)
            self._set(layer, f"bias_ih_l{k}", rows, 0)
            self._set(layer, f"bias_hh_l{k}", rows, 0)
        layer.hidden_size = len(keep)
        _refresh(layer)
        return layer

    def prune_in_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.Module:
        removed = set(int(i) for i in idxs)
        keep = torch.tensor(sorted(set(range(layer.input_size)) - removed), dtype=torch.long)
        for suffix in ("", "_reverse") if layer.bidirectional else ("",):
            self._set(layer, f"weight_ih_l0{suffix}", keep, 1)
        layer.input_size = len(keep)
        _refresh(layer)
        return layer

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size

    def _set(self, layer: nn.RNNBase, name: str, keep: torch.Tensor, dim: int) -> None:
        param = layer._parameters.get(name)
        if param is not None:
            setattr(layer, name, self._prune_parameter_and_grad(param, keep.tolist(), dim))


def _refresh(layer: nn.RNNBase) -> None:
    layer._init_flat_weights()
    if any(p.is_cuda for p in layer.parameters()):
        layer.flatten_parameters()


def gate_recurrent(layer: nn.RNNBase, gate: torch.Tensor) -> list[Any]:
    """Hooks that gate every use of ``layer``'s hidden units by ``gate`` (see the module docstring);
    returns their handles."""
    saved: list[list[torch.Tensor]] = []

    def before(module: nn.RNNBase, args: Any) -> None:
        saved.append(list(module._flat_weights))
        flat = list(module._flat_weights)
        for i, name in enumerate(module._flat_weights_names):
            weight = flat[i]
            if weight is None:
                continue
            if name.startswith("weight_hh_l") or (name.startswith("weight_ih_l") and name != "weight_ih_l0"):
                flat[i] = weight * gate.to(weight.dtype).view(1, -1)
        module._flat_weights = flat

    def after(module: nn.RNNBase, args: Any, output: Any) -> Any:
        module._flat_weights = saved.pop()
        return _gate_outputs(output, gate)

    return [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]


def _gate_outputs(output: Any, gate: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return output * gate.to(output.dtype)
    if isinstance(output, nn.utils.rnn.PackedSequence):
        return output._replace(data=output.data * gate.to(output.data.dtype))
    if isinstance(output, tuple):
        return type(output)(_gate_outputs(o, gate) for o in output) if not hasattr(output, "_fields") else \
            type(output)(*(_gate_outputs(o, gate) for o in output))
    return output



class Conv1DPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning pruner for GPT-2's ``Conv1D`` (weight (in, out), ``nf`` outputs): output channels are
    the weight's columns and the bias, input channels its rows."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[1])) - set(int(i) for i in idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if getattr(layer, "bias", None) is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        if hasattr(layer, "nf"):
            layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[0])) - set(int(i) for i in idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]


def customized_pruners(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """The pruner of every recurrent and GPT-2 Conv1D layer class in ``model`` (torch-pruning keys them by
    exact class)."""
    from ..prunable import is_conv1d_like

    recurrent, conv1d = RecurrentUnitPruner(), Conv1DPruner()
    found: dict[type, tp.pruner.function.BasePruningFunc] = {}
    for m in model.modules():
        if isinstance(m, RECURRENT):
            found[type(m)] = recurrent
        elif not isinstance(m, nn.Linear) and is_conv1d_like(m):
            found[type(m)] = conv1d
    return found


def tracing_hooks(model: nn.Module) -> list[Any]:
    """Forward hooks for tracing only. torch-pruning would walk into a recurrent layer's internal ops (a
    GRU's gate chunks read as a split of its input's channels); the hook makes the traced output depend on
    the input through one channel-wise reduction instead. And torch-pruning follows a recurrent layer through its output sequence,
    so a model using the final states (h_n, c_n) would hide the layer from the traced graph. The hook gives
    back the same values, with h_n and c_n tied to the output sequence (+ 0 · output), so their consumers
    are coupled to the layer's hidden units."""

    def tie(module: nn.Module, args: Any, output: Any) -> Any:
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], torch.Tensor)):
            return output
        out, states = output
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            # The layer's internals (gate chunks, stacking) are hidden from torch-pruning: the traced output
            # depends on the input through one reduction, so the input's channels map to the layer's input.
            out = out.detach() + x.sum(-1, keepdim=True) * 0
        anchor = out[:1, :1] if out.dim() == 3 else out[:1]
        zero = anchor * 0

        def tied(state: Any) -> Any:
            if isinstance(state, torch.Tensor) and state.shape[-1] == anchor.shape[-1]:
                return state.detach() + zero
            return state

        states = tuple(tied(s) for s in states) if isinstance(states, tuple) else tied(states)
        return out, states

    return [m.register_forward_hook(tie) for m in model.modules() if isinstance(m, RECURRENT)]
