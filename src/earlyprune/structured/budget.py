"""Structured pruning to a cost budget: which channels to keep so the pruned model fits a FLOPs fraction,
a parameter count or a training-memory estimate, chosen by the criterion's importance per unit of cost.

Removing half of a network's channels does not halve its cost: a criterion that prefers to remove
cheap channels (the last layers' wide, low-resolution ones) leaves most of the FLOPs. Here every channel's
cost is its share of the layers it touches, counted at the widths currently chosen (a Conv/Linear
layer's FLOPs and weights scale with the kept fractions of its input *and* output channels), channels
are ranked by ``importance / cost``, and the number kept is the largest whose exact cost (the same
layer-by-layer count, re-done for the selection) fits the budget. Costs are then re-taken at the chosen
widths and the ranking re-done, a few times (a greedy fixed point; each pass keeps the budget met).

Budgets (``budget=`` of :func:`earlyprune.prune_channels`), one key:

* ``{"flops": f}``: at most a fraction ``f`` of the dense FLOPs (convolutions and matrix products of
  one example, :mod:`earlyprune.metrics`' count);
* ``{"params": n}``: at most ``n`` parameters (a fraction of them when ``n <= 1``);
* ``{"memory_mb": m, "batch_size": b}``: a training-memory estimate of at most ``m`` MiB at batch size
  ``b``: float32 weights, gradients and one optimizer buffer (3 x 4 bytes per parameter) plus, per
  example, the outputs of every layer with parameters (4 bytes each). Layers without parameters
  (activations, pooling) are not counted: the estimate is a lower bound of what the allocator uses;
* ``{"channels": c}``: keep a fraction ``c`` of the channels, chosen by importance per unit of FLOPs
  (the same channel count as ``sparsity = 1 - c``, for less compute).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import PruningError
from ..metrics import _flops_per_module
from ..model_state import isolated
from ..calling import call_model
from .groups import ChannelGroup

BUDGET_KINDS = ("flops", "params", "memory_mb", "channels")
_PASSES = 3


def check_budget(budget: Mapping[str, Any]) -> tuple[str, float, int]:
    """``(kind, target, batch_size)`` of a budget mapping, or a clear error."""
    if not isinstance(budget, Mapping):
        raise PruningError(f"budget must be a dict such as {{'flops': 0.25}}, got {budget!r}")
    kinds = [k for k in budget if k in BUDGET_KINDS]
    unknown = [k for k in budget if k not in (*BUDGET_KINDS, "batch_size")]
    if unknown or len(kinds) != 1:
        raise PruningError(f"budget takes exactly one of {BUDGET_KINDS} (memory_mb with batch_size), got "
                           f"{dict(budget)!r}")
    kind = kinds[0]
    target = budget[kind]
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0 or math.isinf(target):
        raise PruningError(f"budget {kind} must be a number > 0, got {target!r}")
    if kind in ("flops", "channels") and target > 1:
        raise PruningError(f"budget {kind} is a fraction of the dense model's, in (0, 1], got {target!r}")
    batch = budget.get("batch_size")
    if kind == "memory_mb":
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PruningError("budget memory_mb needs the training batch size: budget={'memory_mb': 200, "
                               f"'batch_size': 128}}; got batch_size={batch!r}")
    elif batch is not None:
        raise PruningError("batch_size applies to a memory_mb budget only")
    return kind, float(target), int(batch or 1)


class CostModel:
    """Per-layer costs of the model as traced, and the cost of any choice of kept channel counts."""

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], example_inputs: Any):
        self.groups = list(groups)
        params = dict(model.named_parameters())
        counted = _flops_per_module(model, example_inputs, None)
        if counted is None:
            raise PruningError("a FLOPs or memory budget needs an example input to count the model's cost")
        total_flops, per_module = counted
        self.flops_total = total_flops
        self.params_total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        self.outputs = _output_sizes(model, example_inputs)
        # (group index, fraction of the dimension that is this group's) for each sliced (parameter, dim)
        self.slices: dict[tuple[str, int], list[tuple[int, float]]] = {}
        self.module_dims: dict[str, set[tuple[str, int]]] = {}
        for g in self.groups:
            for member in g.members:
                for pname, dim in member.params.items():
                    if dim is None or pname not in params:
                        continue
                    share = min(1.0, member.width / params[pname].shape[dim])
                    self.slices.setdefault((pname, dim), []).append((g.index, share))
                    self.module_dims.setdefault(member.module, set()).add((pname, dim))
        self.param_sizes = {n: p.numel() for n, p in params.items()}
        self.module_flops = {name: f for name, f in per_module.items() if f}
        self.weight_of = {name: f"{name}.weight" if name else "weight" for name in self.module_flops}
        self.out_members = {(m.module, g.index, m.width) for g in self.groups for m in g.members
                            if m.direction == "out"}

    def fraction(self, pname: str, dim: int, kept: Mapping[int, float]) -> float:
        return max(0.0, 1.0 - sum(share * (1.0 - kept[g]) for g, share in self.slices.get((pname, dim), [])))

    def _tensor_factor(self, pname: str, kept: Mapping[int, float]) -> float:
        factor = 1.0
        for dim in (0, 1, 2):
            if (pname, dim) in self.slices:
                factor *= self.fraction(pname, dim, kept)
        return factor

    def flops(self, kept: Mapping[int, float]) -> float:
        """FLOPs per example with each group keeping the fraction ``kept[g]`` of its channels."""
        total = self.flops_total - sum(self.module_flops.values())
        for module, flops in self.module_flops.items():
            total += flops * self._tensor_factor(self.weight_of[module], kept)
        return total

    def params(self, kept: Mapping[int, float]) -> float:
        return sum(size * self._tensor_factor(n, kept) for n, size in self.param_sizes.items()) + \
            (self.params_total - sum(self.param_sizes.values()))

    def activations(self, kept: Mapping[int, float]) -> float:
        """Output elements per example of the layers with parameters, scaled by their kept output channels."""
        total = 0.0
        for module, size in self.outputs.items():
            pname = next((p for p, d in self.module_dims.get(module, ()) if d == 0 and p.endswith("weight")), None)
            total += size * (self.fraction(pname, 0, kept) if pname else 1.0)
        return total

    def cost(self, kind: str, kept: Mapping[int, float], batch_size: int = 1) -> float:
        if kind in ("flops", "channels"):
            return self.flops(kept)
        if kind == "params":
            return self.params(kept)
        return (3 * 4 * self.params(kept) + 4 * batch_size * self.activations(kept)) / 2**20


def budget_target(kind: str, target: float, dense_cost: float) -> float:
    """The budget in the cost's own unit: fractions of the dense cost for flops (and params <= 1)."""
    if kind == "flops" or (kind == "params" and target <= 1):
        return target * dense_cost
    return target


def select_to_budget(
    importance: Mapping[int, torch.Tensor],
    groups: Sequence[ChannelGroup],
    costs: CostModel,
    kind: str,
    target: float,
    batch_size: int = 1,
    min_channels: int = 1,
) -> tuple[dict[int, torch.Tensor], dict[str, float]]:
    """``({group: sorted kept channel indices}, reached)`` of the most important channels per unit of cost
    whose cost fits the budget; ``reached`` has the estimated cost, the target and the channels kept."""
    groups = [g for g in groups]
    full = {g.index: 1.0 for g in groups}
    dense = costs.cost(kind, full, batch_size)
    total_channels = sum(g.size for g in groups)
    if kind == "channels":
        goal_channels = round(target * total_channels)
        limit = math.inf
    else:
        goal_channels, limit = None, budget_target(kind, target, dense)
    floors = {g.index: min(g.size, min_channels) for g in groups}
    least = costs.cost(kind, {g.index: floors[g.index] / g.size for g in groups}, batch_size)
    if least > limit:
        raise PruningError(f"the {kind} budget {target:g} cannot be met: keeping {min_channels} channel(s) per group "
                           f"still costs {_text(kind, least, dense)}; ask for a larger budget")
    kept = dict(full)
    keep: dict[int, torch.Tensor] = {}
    for _ in range(_PASSES):
        ratio = _ratios(importance, groups, costs, kind, kept, batch_size)
        order, owner = _ranking(ratio, groups, floors)

        def counts_for(n: int) -> dict[int, int]:
            counts = dict(floors)
            for g in owner[:n]:
                counts[g] += 1
            return counts

        def cost_of(n: int) -> float:
            counts = counts_for(n)
            return costs.cost(kind, {g.index: counts[g.index] / g.size for g in groups}, batch_size)

        optional = len(order)
        if goal_channels is not None:
            n = max(0, min(optional, goal_channels - sum(floors.values())))
        else:
            low, high = 0, optional  # the largest n whose cost fits (cost grows with n)
            while low < high:
                mid = (low + high + 1) // 2
                if cost_of(mid) <= limit:
                    low = mid
                else:
                    high = mid - 1
            n = low
        chosen = {g.index: [] for g in groups}
        for g in groups:
            best = torch.sort(importance[g.index].double(), descending=True, stable=True).indices[:floors[g.index]]
            chosen[g.index].extend(best.tolist())
        for g, channel in order[:n]:
            chosen[g].append(channel)
        keep = {g: torch.tensor(sorted(set(c)), dtype=torch.long) for g, c in chosen.items()}
        kept = {g.index: len(keep[g.index]) / g.size for g in groups}
    reached = costs.cost(kind, kept, batch_size)
    info = {"kind": kind, "target": target, "estimated": reached, "estimated_ratio_of_dense": reached / dense,
            "channels_kept": sum(len(k) for k in keep.values()), "channels_before": total_channels}
    return keep, info


def _ratios(importance, groups, costs: CostModel, kind: str, kept: Mapping[int, float], batch_size: int):
    """Importance per unit of marginal cost of one channel of each group at the current widths."""
    ratios = {}
    for g in groups:
        step = 1.0 / g.size
        lower = dict(kept)
        lower[g.index] = max(0.0, kept[g.index] - step)
        marginal = costs.cost(kind, kept, batch_size) - costs.cost(kind, lower, batch_size)
        if marginal <= 0:  # at width 0 or a cost that does not depend on the group: the cost at full width
            upper = dict(kept)
            upper[g.index] = 1.0
            lower[g.index] = 1.0 - step
            marginal = costs.cost(kind, upper, batch_size) - costs.cost(kind, lower, batch_size)
        score = importance[g.index].double()
        ratios[g.index] = score / marginal if marginal > 0 else torch.where(score > 0, math.inf, 0.0).double()
    return ratios


def _ranking(ratio, groups, floors):
    """Channels beyond each group's floor (its best ones: within a group the ratio orders as the importance
    does), best ratio first, ties by group then channel."""
    candidates = []
    for g in groups:
        order = torch.sort(ratio[g.index], descending=True, stable=True).indices.tolist()
        for channel in order[floors[g.index]:]:
            candidates.append((float(ratio[g.index][channel]), g.index, channel))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    order = [(g, c) for _, g, c in candidates]
    return order, [g for g, _ in order]


def _output_sizes(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Output elements per example of every module with parameters of its own."""
    sizes: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue

        def hook(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim():
                sizes[name] = output[0].numel() if output.shape[0] == 1 else output.numel() // output.shape[0]

        handles.append(module.register_forward_hook(hook))
    try:
        with isolated(model, train=False), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _text(kind: str, value: float, dense: float) -> str:
    if kind == "memory_mb":
        return f"{value:.1f} MiB (dense {dense:.1f})"
    if kind == "params":
        return f"{value:,.0f} parameters (dense {dense:,.0f})"
    return f"{value / dense:.3g} of the dense FLOPs"


def measured_budget(surgery: Any, costs: CostModel, model: nn.Module, example_inputs: Any, kind: str,
                    batch_size: int) -> dict[str, float]:
    """What the pruned model reached, counted on it (FLOPs by :mod:`earlyprune.metrics`, parameters, the
    memory estimate), beside the dense model's."""
    counted = _flops_per_module(model, example_inputs, None)
    flops = counted[0] if counted is not None else None
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    reached = {"flops": flops, "flops_ratio_of_dense": flops / costs.flops_total if flops else None,
               "params": params, "params_ratio_of_dense": params / costs.params_total}
    if kind == "memory_mb":
        activations = sum(_output_sizes(model, example_inputs).values())
        reached["memory_mb"] = (3 * 4 * params + 4 * batch_size * activations) / 2**20
    return reached
