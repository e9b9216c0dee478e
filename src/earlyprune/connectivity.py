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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .batches import tree_map
from .calling import predict
from .model_state import isolated, model_device, model_dtype
from .selection import cuts_the_network


def network_cut(model: nn.Module, names: Sequence[str], collapsed: Sequence[str], inputs: Any = None,
                dense_params: Mapping[str, torch.Tensor] | None = None) -> str:
    """Why the collapse of the layers ``collapsed`` (among the prunable ``names``, in order) cuts the
    pruned ``model`` (its weights already masked); '' when it does not. ``inputs`` is one batch of the
    model's inputs (None: the model's own example inputs if it has them, else the layer order).
    ``dense_params`` (the scored weights before pruning, by name): when the output does not follow the
    input after pruning, the unpruned network is checked too; if it did not either (a zero-initialised
    classifier head), the check says nothing and the layer order decides."""
    if not collapsed:
        return ""
    if inputs is None:
        inputs = _model_inputs(model)
    connected = None if inputs is None else output_depends_on_input(model, inputs)
    if connected is False and dense_params is not None:
        if output_depends_on_input(model, inputs, params=dense_params) is not True:
            connected = None  # the dense network's output did not follow its input either
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


#: Keys of keyword inputs that describe the input rather than carry it (left as they are: an inverted
#: attention mask can turn a pooled output into NaN).
_DESCRIPTIVE_KEYS = ("mask", "token_type", "position")


def output_depends_on_input(model: nn.Module, inputs: Any, seed: int = 0,
                            params: Mapping[str, torch.Tensor] | None = None) -> bool | None:
    """Whether ``model``'s prediction (eval mode, no gradients, the RNG seeded alike for both calls)
    changes when ``inputs`` change; None when the test cannot tell: nothing in the inputs could be
    changed, the model cannot be called on them, or a prediction is not finite. ``params`` replace some of
    the model's tensors for the calls (by name). The model is left as it was (modes, RNG)."""
    generator = torch.Generator().manual_seed(seed)
    changed = []

    def perturbed(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point() and tensor.numel():
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            changed.append(True)
            return tensor + noise.to(tensor.device) * (1.0 + tensor.detach().abs().mean())
        if tensor.dtype == torch.bool or tensor.is_floating_point() or not tensor.numel():
            return tensor
        high = int(tensor.max()) + 1  # other ids of the range seen (token ids, class indices, ...)
        if high < 2:
            return tensor
        other = torch.randint(0, high, tensor.shape, generator=generator).to(tensor.device, tensor.dtype)
        changed.append(True)
        return torch.where(other == tensor, (other + 1) % high, other)

    def perturb(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: v if any(part in str(k) for part in _DESCRIPTIVE_KEYS) else perturb(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(perturb(v) for v in value)
        return tree_map(perturbed, value)

    other_inputs = perturb(inputs)
    if not changed:
        return None
    tensors = None
    if params is not None:
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers()), **params}
    try:
        with isolated(model, train=False), torch.no_grad():
            torch.manual_seed(seed)  # a forward that draws random numbers draws the same ones in both calls
            first = predict(model, inputs, tensors)
            torch.manual_seed(seed)
            second = predict(model, other_inputs, tensors)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # inputs the model is not called on directly (e.g. RL transitions)
        return None
    if first.shape != second.shape:
        return True
    if not (bool(torch.isfinite(first).all()) and bool(torch.isfinite(second).all())):
        return None
    return not torch.allclose(first.float(), second.float(), rtol=1e-6, atol=1e-7)
