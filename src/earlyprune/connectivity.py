"""Does a pruned network still connect its input to its output? The test behind ``on_collapse="guard"``.

A layer pruned to nothing (layer collapse, Tanaka et al., "Pruning neural networks without any data by
iteratively conserving synaptic flow", NeurIPS 2020) cuts a plain feed-forward network: its output no
longer depends on its input, and it cannot learn. In a network with skip connections (a ResNet, a
transformer) an emptied layer may only remove one path: the query projection of an attention block
emptied leaves uniform attention, and the residual stream still carries the input. So the guard does not
judge by which layer emptied; it runs the pruned model, in eval mode and without gradients, on two
different inputs of the scoring data's kind (the batch itself and a perturbed copy: Gaussian noise on
floating inputs, other token ids of the same range for integer inputs) and calls the network cut when the
two predictions are equal. Emptying more than half of the prunable layers is refused too, even where a
signal still passes (what is left is hardly the network that was asked for).

Without any input to run (a data-free criterion on a model without ``input_shape``), the guard falls back
to the layer order: the first or the last prunable layer emptied counts as a cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .batches import tree_map
from .calling import predict
from .model_state import isolated, model_device, model_dtype
from .selection import cuts_the_network


def network_cut(model: nn.Module, names: Sequence[str], collapsed: Sequence[str], inputs: Any = None) -> str:
    """Why the collapse of the layers ``collapsed`` (among the prunable ``names``, in order) cuts the
    pruned ``model`` (its weights already masked); '' when it does not. ``inputs`` is one batch of the
    model's inputs (None: the model's own example inputs if it has them, else the layer order)."""
    if not collapsed:
        return ""
    if inputs is None:
        inputs = _model_inputs(model)
    try:
        connected = None if inputs is None else output_depends_on_input(model, inputs)
    except Exception:  # inputs the model is not called on directly (e.g. RL transitions): the layer order
        connected = None
    if connected is None:  # the layer-order rule: first or last layer emptied, or most layers
        return cuts_the_network(names, collapsed)
    reasons = []
    if 2 * len(collapsed) > len(names):
        reasons.append(f"{len(collapsed)} of the {len(names)} layers are pruned to nothing")
    if not connected:
        reasons.append("the network's output no longer depends on its input (checked on two different inputs)")
    return "; ".join(reasons)


def _model_inputs(model: nn.Module) -> Any:
    """Two examples for a model scored without data: its ``example_input(2)`` (the reference models; token
    models give int64 ids), else random inputs of its ``input_shape``; None without either."""
    if callable(getattr(model, "example_input", None)):
        return model.example_input(2)
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return None
    return torch.randn(2, *shape, device=model_device(model), dtype=model_dtype(model))


def output_depends_on_input(model: nn.Module, inputs: Any, seed: int = 0) -> bool:
    """Whether ``model``'s prediction (eval mode, no gradients) changes when ``inputs`` change. The model
    is left as it was (modes, RNG)."""
    generator = torch.Generator().manual_seed(seed)

    def perturbed(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            return tensor + noise.to(tensor.device) * (1.0 + tensor.detach().abs().mean())
        if tensor.dtype == torch.bool or not tensor.numel():
            return tensor
        high = int(tensor.max()) + 1  # other ids of the range seen (token ids, class indices, ...)
        if high < 2:
            return tensor
        other = torch.randint(0, high, tensor.shape, generator=generator).to(tensor.device, tensor.dtype)
        return torch.where(other == tensor, (other + 1) % high, other)

    with isolated(model, train=False), torch.no_grad():
        first = predict(model, inputs)
        second = predict(model, tree_map(perturbed, inputs))
    if first.shape != second.shape:
        return True
    return not torch.allclose(first.float(), second.float(), rtol=1e-6, atol=1e-7)
