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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..calling import predict
from ..errors import PruningError
from ..model_state import isolated, model_device, model_dtype
from ..progress import rounds
from ..selection import check_sparsity, select, top_by_position
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
    generic = (scope, rule) != ("global", "topk") or on_collapse == "keep_min"
    with isolated(model, train=False, seed=seed), _linearised(model, params, double) as (linear, flat_values):
        names = list(linear)
        values = [linear[n] for n in names]
        sizes = [v.numel() for v in values]
        alive = torch.ones(flat_values.numel(), dtype=torch.bool, device=flat_values.device)
        if masks:
            alive = torch.cat([masks[n].to(device=alive.device, dtype=torch.bool).flatten() if n in masks
                               else torch.ones(v.numel(), dtype=torch.bool, device=alive.device)
                               for n, v in zip(names, values)])
            flat_values.mul_(alive)
        for index, target in enumerate(rounds(targets, description)):
            flow = predict(model, ones).sum()
            if not torch.isfinite(flow):
                raise PruningError(
                    f"SynFlow's synaptic flow R overflowed to {flow.item()}; score with double=True (float64)"
                )
            grads = torch.autograd.grad(flow, values, allow_unused=True)
            grads = [torch.zeros_like(v) if g is None else g for v, g in zip(values, grads)]
            scores = (torch.cat([g.flatten() for g in grads]) * flat_values).abs_()
            keep = None if generic else _select_global_topk(scores, alive, target)
            if keep is None:  # the general rules, or a case whose error or warning select() gives
                importance = {n: part.view(v.shape) for n, v, part in zip(names, values, scores.split(sizes))}
                current = {n: part.view(v.shape) for n, v, part in zip(names, values, alive.split(sizes))}
                flat, collapsed = select(importance, target, scope, current, rule, on_collapse, min_per_layer,
                                         on_zero_scores=on_zero_scores)
                keep = torch.cat([flat[n].flatten().to(alive.device) for n in names])
            elif on_collapse in ("raise", "guard") or index == len(targets) - 1:  # else only the last counts
                counts = _counts(keep, sizes)
                collapsed = [n for n, size, c in zip(names, sizes, counts) if size and c == 0]
                if collapsed and on_collapse in ("raise", "guard"):  # select() raises (or warns) as it does
                    importance = {n: part.view(v.shape) for n, v, part in zip(names, values, scores.split(sizes))}
                    current = {n: part.view(v.shape) for n, v, part in zip(names, values, alive.split(sizes))}
                    select(importance, target, scope, current, rule, on_collapse, min_per_layer,
                           on_zero_scores=on_zero_scores)
            alive = keep
            with torch.no_grad():
                flat_values.mul_(alive)
    masks = {n: part.view(params[n].shape).to(params[n].device) for n, part in zip(names, alive.split(sizes))}
    return masks, collapsed


def _select_global_topk(scores: torch.Tensor, alive: torch.Tensor, sparsity: float) -> torch.Tensor | None:
    """:func:`select`'s global top-k on one flat tensor: the same mask, or None where select() must
    decide (a NaN or infinite score, no positive unpruned score).

    The scores are >= 0 and exactly 0 for pruned weights (their linearised value is 0), so a finite
    positive sum means every score is finite and some unpruned weight scores above 0.
    """
    total_score = scores.sum()
    if not (bool(torch.isfinite(total_score)) and bool(total_score > 0)):
        return None
    count = round((1.0 - check_sparsity(sparsity)) * scores.numel())
    unpruned = scores[alive]  # the threshold is found among these only (2% of the weights at the end)
    if count >= unpruned.numel():
        return alive.clone()
    if count > 0:
        threshold = torch.kthvalue(unpruned, unpruned.numel() - count + 1).values
        at_least = (scores >= threshold) & alive
        if int(at_least.sum()) == count:  # no tie at the threshold (the common case)
            return at_least
    return top_by_position(torch.where(alive, scores, -math.inf), count) & alive


def _counts(keep: torch.Tensor, sizes: Sequence[int]) -> list[int]:
    """Number of kept entries in each consecutive part of ``keep`` of the given sizes."""
    ends = torch.tensor(sizes, device=keep.device).cumsum(0)
    cumulative = torch.cat([keep.new_zeros(1, dtype=torch.long), keep.long().cumsum(0)])
    at_ends = cumulative[ends]
    return (at_ends - torch.cat([at_ends.new_zeros(1), at_ends[:-1]])).tolist()


class _linearised:
    """Context: every parameter and floating buffer of ``model`` replaced by its absolute value (float64
    with ``double``), only the scored ``params`` requiring gradients; the original tensors and flags are
    put back on exit. Yields ``{scored name: linearised parameter}``."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter], double: bool):
        self.model, self.params, self.double = model, params, double

    def _value(self, tensor: torch.Tensor) -> torch.Tensor:
        value = tensor.detach().abs()
        return value.to(torch.float64) if self.double else value

    def __enter__(self) -> tuple[dict[str, nn.Parameter], torch.Tensor]:
        scored = {id(p): n for n, p in self.params.items()}
        # the scored weights are views into one flat tensor, so a round's masking is one multiply
        first = next(iter(self.params.values()))
        flat = torch.cat([self._value(p.data).flatten().to(first.device) for p in self.params.values()])
        views = dict(zip(self.params, flat.split([p.numel() for p in self.params.values()])))
        self.saved = []
        linear = {}
        for p in self.model.parameters():  # each shared parameter once
            self.saved.append((p, p.data, p.requires_grad))
            name = scored.get(id(p))
            p.data = self._value(p.data) if name is None else views[name].view(p.shape)
            p.requires_grad_(name is not None)
            if name is not None:
                linear[name] = p
        for b in self.model.buffers():
            if b.is_floating_point():
                self.saved.append((b, b.data, None))
                b.data = self._value(b.data)
        return {n: linear[n] for n in self.params}, flat

    def __exit__(self, *exc: Any) -> None:
        for tensor, data, requires_grad in self.saved:
            tensor.data = data
            if requires_grad is not None:
                tensor.requires_grad_(requires_grad)


