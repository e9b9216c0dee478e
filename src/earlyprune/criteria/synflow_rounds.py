"""SynFlow's rounds without per-round overhead: the network is linearised once, not once per round.

SynFlow prunes in 100 rounds (Tanaka et al., NeurIPS 2020), and each round's arithmetic is tiny: one
forward and one backward pass of a single all-ones example. Run as 100 independent scoring calls, every
round also copies the model's state to restore it, re-takes the absolute value of every parameter and
buffer, and calls the model through ``torch.func.functional_call``; on a small network that overhead is
most of the cost. :func:`synflow_rounds` does what the official code (ganguli-lab/Synaptic-Flow) does:
it replaces the parameters and buffers by their absolute values once (the originals are kept and put
back at the end, also on error), and each round runs the linearised model directly, zeroes the newly
pruned entries of the linearised weights in place, and selects with the library's :func:`select` (the
same rules, collapse policies and errors as every other round).

The masks are exactly those of the plain route (one :func:`~earlyprune.criteria.compute_importance`
call and one :func:`select` per round): the linearised weights are the same values (pruned entries
zero), the model is in eval mode in both, and eval mode keeps the buffers fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..calling import predict
from ..errors import PruningError
from ..model_state import isolated, model_device, model_dtype
from ..progress import rounds
from ..selection import reshape_like, select
from .spec import Criterion
from .synflow import _all_ones_input, synflow_importance


def runs_in_place(criterion: Criterion, train: bool | None, ablation: str | None) -> bool:
    """Whether :func:`earlyprune.prune`'s rounds of ``criterion`` can use :func:`synflow_rounds`: SynFlow's
    own importance, scored in eval mode (in training mode BatchNorm would move its statistics between
    rounds, which the plain route restores), without an ablation that changes the scores."""
    return criterion.importance is synflow_importance and not train and ablation != "invert"


def synflow_rounds(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    targets: Sequence[float],
    current: Mapping[str, torch.Tensor] | None,
    *,
    batches: Sequence[Any] | None = None,
    scope: str = "global",
    rule: str = "topk",
    on_collapse: str = "warn",
    min_per_layer: int = 1,
    on_zero_scores: str = "raise",
    seed: int = 0,
    double: bool = False,
    input_shape: Sequence[int] | None = None,
    description: str = "synflow rounds",
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(masks, collapsed)`` after one SynFlow round per sparsity in ``targets``, as ``prune`` computes them.

    ``current`` are the masks already applied (None for a dense model). The model is left as it was
    found (values, buffers, modes, gradients, RNG); applying the masks is the caller's job.
    """
    device = model_device(model)
    dtype = torch.float64 if double else model_dtype(model)
    if input_shape is None and not batches:
        input_shape = getattr(model, "input_shape", None)
    ones = _all_ones_input(batches, input_shape, device, dtype)
    masks = None if current is None else {n: current[n].to(params[n].device) for n in params if n in current}
    collapsed: list[str] = []
    with isolated(model, train=False, seed=seed), _linearised(model, params, double) as linear:
        names = list(linear)
        values = [linear[n] for n in names]
        if masks:
            _zero(linear, masks)
        for target in rounds(targets, description):
            flow = predict(model, ones).sum()
            if not torch.isfinite(flow):
                raise PruningError(
                    f"SynFlow's synaptic flow R overflowed to {flow.item()}; score with double=True (float64)"
                )
            grads = torch.autograd.grad(flow, values, allow_unused=True)
            importance = {n: torch.zeros_like(v) if g is None else (g * v).detach().abs()
                          for n, v, g in zip(names, values, grads)}
            flat, collapsed = select(importance, target, scope, masks, rule, on_collapse, min_per_layer,
                                     on_zero_scores=on_zero_scores)
            masks = reshape_like(flat, params)
            _zero(linear, masks)
    return masks, collapsed


class _linearised:
    """Context: every parameter and floating buffer of ``model`` replaced by its absolute value (float64
    with ``double``), only the scored ``params`` requiring gradients; the original tensors and flags are
    put back on exit. Yields ``{scored name: linearised parameter}``."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter], double: bool):
        self.model, self.params, self.double = model, params, double

    def _value(self, tensor: torch.Tensor) -> torch.Tensor:
        value = tensor.detach().abs()
        return value.to(torch.float64) if self.double else value

    def __enter__(self) -> dict[str, nn.Parameter]:
        scored = {id(p): n for n, p in self.params.items()}
        self.saved = []
        linear = {}
        for p in self.model.parameters():  # each shared parameter once
            self.saved.append((p, p.data, p.requires_grad))
            p.data = self._value(p.data)
            p.requires_grad_(id(p) in scored)
            if id(p) in scored:
                linear[scored[id(p)]] = p
        for b in self.model.buffers():
            if b.is_floating_point():
                self.saved.append((b, b.data, None))
                b.data = self._value(b.data)
        return linear

    def __exit__(self, *exc: Any) -> None:
        for tensor, data, requires_grad in self.saved:
            tensor.data = data
            if requires_grad is not None:
                tensor.requires_grad_(requires_grad)


def _zero(linear: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in linear.items():
            if name in masks:
                value.mul_(masks[name].to(device=value.device, dtype=value.dtype))
