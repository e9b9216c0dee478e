"""SynFlow: iterative synaptic flow (Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without
any data by iteratively conserving synaptic flow", NeurIPS 2020).

Data-free. The network is linearised by replacing every parameter and buffer with its absolute value,
fed one all-ones input, and R = sum of its outputs. Importance of θ is |θ ⊙ ∂R/∂θ| (with θ ≥ 0 after
linearisation). As in the official code (ganguli-lab/Synaptic-Flow) the model is scored in eval mode,
pruned weights (zero) score zero, and float64 is available against overflow of R in deep networks.
The 100 rounds with the exponential schedule belong to :func:`earlyprune.prune` (``iterations``).

The model is never modified: the linearised parameters are passed with ``torch.func.functional_call``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..errors import PruningError
from ._context import Batch, model_device, model_dtype


def synflow_importance(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Sequence[Batch] | None = None,
    input_shape: Sequence[int] | None = None,
    double: bool = False,
) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂R/∂θ| of the abs-linearised network on an all-ones input; higher = keep.

    The input's shape comes from ``input_shape`` (without batch dimension) or from the first batch.
    ``double`` computes in float64 (scores are returned in float64 then).
    """
    device = model_device(model)
    dtype = torch.float64 if double else None
    ones = _all_ones_input(batches, input_shape, device, dtype or model_dtype(model))
    names_scored = {id(p): n for n, p in params.items()}
    linear_params: dict[str, torch.Tensor] = {}
    scored: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        value = p.detach().abs()
        if dtype is not None:
            value = value.to(dtype)
        if id(p) in names_scored:
            value.requires_grad_(True)
            scored[names_scored[id(p)]] = value
        linear_params[name] = value
    buffers = {
        name: (b.detach().abs().to(dtype) if dtype is not None else b.detach().abs())
        if b.is_floating_point()
        else b
        for name, b in model.named_buffers()
    }
    was_training = model.training
    model.eval()
    try:
        output = functional_call(model, {**linear_params, **buffers}, (ones,))
    finally:
        model.train(was_training)
    flow = output.sum()
    if not torch.isfinite(flow):
        raise PruningError(
            f"SynFlow's synaptic flow R overflowed to {flow.item()}; score with double=True (float64)"
        )
    grads = torch.autograd.grad(flow, list(scored.values()), allow_unused=True)
    result = {}
    for (name, value), grad in zip(scored.items(), grads):
        result[name] = torch.zeros_like(value) if grad is None else (grad * value).detach().abs()
    return result


def _all_ones_input(
    batches: Sequence[Batch] | None,
    input_shape: Sequence[int] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Any:
    if input_shape is not None:
        return torch.ones((1, *input_shape), device=device, dtype=dtype)
    if not batches:
        raise PruningError(
            "synflow is data-free but needs the input shape: pass input_shape=(C, H, W) or one batch of data"
        )
    return _ones_like_one_sample(batches[0][0], device, dtype)


def _ones_like_one_sample(value: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(value, torch.Tensor):
        ones = torch.ones_like(value[:1], device=device)
        return ones.to(dtype) if dtype is not None and ones.is_floating_point() else ones
    if isinstance(value, Mapping):
        return {k: _ones_like_one_sample(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_ones_like_one_sample(v, device, dtype) for v in value)
    return value
