"""SynFlow: iterative synaptic flow (Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without
any data by iteratively conserving synaptic flow", NeurIPS 2020).

Data-free. The network is linearised by replacing every parameter and buffer with its absolute value,
fed one all-ones input, and R = sum of its outputs. Importance of θ is |θ ⊙ ∂R/∂θ| (with θ ≥ 0 after
linearisation). As in the official code (ganguli-lab/Synaptic-Flow) the model is scored in eval mode,
pruned weights (zero) score zero, and float64 is available against overflow of R in deep networks.
The criterion declares 100 rounds on the exponential schedule; :func:`earlyprune.prune` runs them
(``iterations`` to change it). The all-ones input takes its shape from ``input_shape``, else from the
first scoring batch, else from the model's ``input_shape`` attribute (the reference models have one).

The model is never modified: the linearised parameters are passed with ``torch.func.functional_call``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..batches import Batch, tree_map
from ..calling import predict
from ..errors import PruningError
from ..model_state import model_device, model_dtype
from .official import Official
from .spec import Criterion, Scoring


def synflow_importance(
    scoring: Scoring,
    *,
    double: bool = False,
    input_shape: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂R/∂θ| of the abs-linearised network on an all-ones input; higher = keep.

    The input's shape (without batch dimension) comes from ``input_shape``, the first scoring batch or
    the model's ``input_shape`` attribute. ``double`` computes in float64 (scores are float64 then).
    The model is scored in eval mode (the criterion's declared mode).
    """
    model, params, batches = scoring.model, scoring.params, scoring.batches
    device = model_device(model)
    dtype = torch.float64 if double else None
    if input_shape is None and not batches:
        input_shape = getattr(model, "input_shape", None)
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
    output = predict(model, ones, params={**linear_params, **buffers})
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
    def ones(tensor: torch.Tensor) -> torch.Tensor:
        result = torch.ones_like(tensor[:1], device=device)
        return result.to(dtype) if dtype is not None and result.is_floating_point() else result

    return tree_map(ones, value)


SYNFLOW = Criterion(
    "synflow", paper="Tanaka, Kunin, Yamins, Ganguli, SynFlow, NeurIPS 2020",
    summary="abs(θ ⊙ ∂R/∂θ) of the abs-linearised net on an all-ones input, data-free, 100 rounds",
    importance=synflow_importance, data="none", train=False, iterations=100,
    official=Official("ganguli-lab/Synaptic-Flow, Pruners/pruners.py (Pruner._global_mask)", settings={"rule": "official"},
                      notes=("prunes every score <= the k-th smallest, k = int(s*N) (rule='official')",)),
)
