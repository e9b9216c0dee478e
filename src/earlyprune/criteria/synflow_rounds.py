"""SynFlow's rounds without per-round overhead: the network is linearised once, not once per round.

SynFlow prunes in 100 rounds (Tanaka et al., NeurIPS 2020), and each round's arithmetic is tiny: one
forward and one backward pass of a single all-ones example. Run as 100 independent scoring calls, every
round also copies the model's state to restore it, re-takes the absolute value of every parameter and
buffer, and calls the model through ``torch.func.functional_call``; on a small network that overhead is
most of the cost. :func:`synflow_rounds` does what the official code (ganguli-lab/Synaptic-Flow) does:
it replaces the parameters and buffers by their absolute values once (the originals are kept and put
back at the end, also on error), and each round runs the linearised model directly and zeroes the newly
pruned entries of the linearised weights in place. The global top-k selection of each round works on
the unpruned weights only (their flat positions are kept, so late rounds of a 98% prune select among 2%
of the weights), with :func:`~earlyprune.selection.kth_smallest`; the other rules and every case
where ``select`` must warn or raise go through :func:`select` itself (the same rules, collapse policies
and errors as every other round). On a CPU the passes of a small network run on one intra-op thread:
they are of one example, too small for a second thread to pay for its synchronisation.

The masks are exactly those of the plain route (one :func:`~earlyprune.criteria.compute_importance`
call and one :func:`select` per round): the linearised weights are the same values (pruned entries
zero), the model is in eval mode in both, and eval mode keeps the buffers fixed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..calling import predict
from ..errors import PruningError
from ..model_state import isolated, model_device, model_dtype
from ..progress import rounds
from ..selection import check_sparsity, kth_smallest, select, top_by_position
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
        ends = torch.tensor(sizes, device=flat_values.device).cumsum(0)
        alive = torch.arange(flat_values.numel(), device=flat_values.device)  # flat positions still unpruned
        if masks:
            unpruned = torch.cat([masks[n].to(device=alive.device, dtype=torch.bool).flatten() if n in masks
                                  else torch.ones(v.numel(), dtype=torch.bool, device=alive.device)
                                  for n, v in zip(names, values)])
            flat_values.mul_(unpruned)
            alive = unpruned.nonzero().flatten()
        for index, target in enumerate(rounds(targets, description)):
            with _one_thread_on_cpu(device, flat_values.numel()):
                flow = predict(model, ones).sum()
                if not torch.isfinite(flow):
                    raise PruningError(
                        f"SynFlow's synaptic flow R overflowed to {flow.item()}; score with double=True (float64)"
                    )
                grads = torch.autograd.grad(flow, values, allow_unused=True)
            grad = torch.cat([torch.zeros(v.numel(), dtype=v.dtype, device=v.device) if g is None
                              else g.flatten() for v, g in zip(values, grads)])
            kept = None if generic else _select_global_topk(grad, flat_values, alive, target)
            by_select = kept is None  # the general rules, or a case whose error or warning select() gives
            if by_select:
                importance, current = _full_tensors(grad, flat_values, alive, names, values, sizes)
                flat, collapsed = select(importance, target, scope, current, rule, on_collapse, min_per_layer,
                                         on_zero_scores=on_zero_scores)
                kept = torch.cat([flat[n].flatten().to(alive.device) for n in names]).index_select(0, alive)
            survivors = _compress(alive, kept)
            if not by_select and (on_collapse in ("raise", "guard") or index == len(targets) - 1):
                counts = _counts(survivors, ends)  # (before the last round only raise and guard need them)
                collapsed = [n for n, size, c in zip(names, sizes, counts) if size and c == 0]
                if collapsed and on_collapse in ("raise", "guard"):  # select() raises (or warns) as it does
                    importance, current = _full_tensors(grad, flat_values, alive, names, values, sizes)
                    select(importance, target, scope, current, rule, on_collapse, min_per_layer,
                           on_zero_scores=on_zero_scores)
            with torch.no_grad():
                flat_values.index_fill_(0, _compress(alive, ~kept), 0.0)
            alive = survivors
    keep = torch.zeros(flat_values.numel(), dtype=torch.bool, device=alive.device).index_fill_(0, alive, True)
    masks = {n: part.view(params[n].shape).to(params[n].device) for n, part in zip(names, keep.split(sizes))}
    return masks, collapsed


def _select_global_topk(
    grad: torch.Tensor, values: torch.Tensor, alive: torch.Tensor, sparsity: float
) -> torch.Tensor | None:
    """:func:`select`'s global top-k, computed among the unpruned weights only: which of the flat
    positions ``alive`` stay (a mask over them), or None where select() must decide (a NaN or infinite
    score anywhere, no positive unpruned score).

    Pruned weights score exactly 0 (their linearised value is 0) as long as their gradient is finite, so
    they never reach the threshold; finding it among the unpruned weights alone (2% of them at the end of
    a 98% prune) is what makes the late rounds cheap. Ties at the threshold go by position, as in select().
    """
    if not bool(torch.isfinite(grad.sum())):  # select() names the layer with the NaN or infinite score
        return None
    scores = (grad.index_select(0, alive) * values.index_select(0, alive)).abs_()
    total_score = scores.sum()
    if not (bool(torch.isfinite(total_score)) and bool(total_score > 0)):
        return None
    count = round((1.0 - check_sparsity(sparsity)) * values.numel())
    if count >= scores.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        at_least = scores >= kth_smallest(scores, scores.numel() - count + 1)
        if int(torch.count_nonzero(at_least)) == count:  # no tie at the threshold (the common case)
            return at_least
    return top_by_position(scores, count)


def _full_tensors(
    grad: torch.Tensor, values: torch.Tensor, alive: torch.Tensor, names: Sequence[str],
    params: Sequence[torch.Tensor], sizes: Sequence[int],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The round's importance and current masks per parameter, as :func:`select` takes them."""
    scores = (grad * values).abs_()
    unpruned = torch.zeros(values.numel(), dtype=torch.bool, device=alive.device).index_fill_(0, alive, True)
    importance = {n: part.view(p.shape) for n, p, part in zip(names, params, scores.split(sizes))}
    current = {n: part.view(p.shape) for n, p, part in zip(names, params, unpruned.split(sizes))}
    return importance, current


def _counts(kept: torch.Tensor, ends: torch.Tensor) -> list[int]:
    """Number of the sorted flat positions ``kept`` in each consecutive part ending before ``ends``."""
    at_ends = torch.searchsorted(kept, ends)
    return (at_ends - torch.cat([at_ends.new_zeros(1), at_ends[:-1]])).tolist()


def _compress(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values[keep]`` for a 1-D tensor and boolean mask; on a CPU through NumPy, whose boolean indexing
    was 10x faster than torch 2.13's on this machine (430k entries, 96% kept: 0.6 ms against 7.4 ms)."""
    if values.device.type == "cpu":
        return torch.from_numpy(values.numpy()[keep.numpy()])
    return values[keep]


@contextmanager
def _one_thread_on_cpu(device: torch.device, weights: int) -> Iterator[None]:
    """One intra-op thread for a round's passes on a CPU, for networks of under a million scored weights
    (the thread count is put back after, also on error).

    The passes are of one example: on a small network they are many tiny operations, where a second
    thread costs more in synchronisation than it computes, and on the 2-core development machine its
    timing was erratic (ResNet-20, 100 rounds, interleaved: median 1.40 s on one thread against 2.14 s on
    two, whose fastest was 1.28 s). On VGG-16 (15M weights) two threads were faster (15.0 s against
    18.9 s), so larger networks keep the caller's threads. The scores are the same either way
    (``tests/test_scoring_speed_paths.py`` compares the masks with the plain route at two threads).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or weights >= _ONE_THREAD_BELOW:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_ONE_THREAD_BELOW = 1_000_000  # scored weights


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
