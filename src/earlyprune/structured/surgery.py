"""Physical removal of channels, with the caller's optimizer kept working.

torch-pruning's per-group pruning slices every coupled tensor (conv out-channels, BatchNorm, the next
layers' in-channels, flatten->Linear blocks) and replaces each Parameter with a new, smaller one (its
``.grad`` sliced too). This module records exactly which indices each parameter kept, then uses that
map to

* slice the optimizer in place: the old Parameter objects in ``param_groups`` are replaced by the new
  ones and their per-parameter state (SGD momentum, Adam/AdamW moments) is sliced along the same
  dimensions, so the caller's optimizer, and an LR scheduler holding it, go on;
* slice unstructured masks applied to the same layers (:meth:`earlyprune.Masks.reindex`).

Afterwards the model is plain and natively narrow: no hooks, masks or index operations are left in it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch_pruning as tp
from torch import nn

from ..masks import applied_masks
from .groups import GroupPlan

KeptIndices = dict[str, dict[int, torch.Tensor]]


@dataclass
class ShrinkResult:
    """What surgery did: kept indices per changed parameter, sizes and layer widths before and after."""

    kept_indices: KeptIndices
    params_before: int
    params_after: int
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def _recording_slices() -> Iterator[dict[int, tuple[nn.Parameter, int, torch.Tensor]]]:
    """Record every parameter slice torch-pruning makes: id(new param) -> (old param, dim, kept indices)."""
    record: dict[int, tuple[nn.Parameter, int, torch.Tensor]] = {}
    base = tp.pruner.function.BasePruningFunc
    original = base._prune_parameter_and_grad

    def recording(self, weight, keep_idxs, pruning_dim):
        new = original(self, weight, keep_idxs, pruning_dim)
        record[id(new)] = (weight, pruning_dim, torch.as_tensor(keep_idxs, dtype=torch.long))
        return new

    base._prune_parameter_and_grad = recording
    try:
        yield record
    finally:
        base._prune_parameter_and_grad = original


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Linear/Conv layer."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            widths[name] = m.out_features
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            widths[name] = m.out_channels
    return widths


def shrink(
    model: nn.Module,
    plan: GroupPlan,
    keep: dict[int, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> ShrinkResult:
    """Remove every channel not in ``keep`` (``{group index: kept indices}``) from ``model``, in place."""
    before = {n: p for n, p in model.named_parameters()}
    params_before = sum(p.numel() for p in before.values())
    widths_before = layer_widths(model)
    with _recording_slices() as record:
        for group, (root, handler) in zip(plan.groups, plan.roots):
            kept = set(keep[group.index].tolist())
            remove = [i for i in range(group.size) if i not in kept]
            if remove:
                plan.graph.get_pruning_group(root, handler, idxs=remove).prune()
    after = dict(model.named_parameters())
    kept_indices = _compose(before, after, record)
    if optimizer is not None:
        _slice_optimizer(optimizer, before, after, kept_indices)
    masks = applied_masks(model)
    if masks is not None:
        masks.reindex(model, kept_indices)
    return ShrinkResult(kept_indices, params_before, sum(p.numel() for p in after.values()), widths_before,
                        layer_widths(model))


def _compose(before: dict[str, nn.Parameter], after: dict[str, nn.Parameter], record) -> KeptIndices:
    """Per parameter name, the kept indices along each dimension relative to the original tensor."""
    kept: KeptIndices = {}
    for name, new in after.items():
        chain = []
        current = new
        while id(current) in record:
            old, dim, index = record[id(current)]
            chain.append((dim, index))
            current = old
        if not chain:
            continue
        if current is not before.get(name):
            raise RuntimeError(f"surgery lost track of parameter {name}")
        dims: dict[int, torch.Tensor] = {}
        for dim, index in reversed(chain):  # oldest slice first
            dims[dim] = dims[dim][index] if dim in dims else index
        kept[name] = dims
    return kept


def _slice(tensor: torch.Tensor, dims: dict[int, torch.Tensor]) -> torch.Tensor:
    for dim, index in dims.items():
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def _slice_optimizer(optimizer: torch.optim.Optimizer, before: dict[str, nn.Parameter],
                     after: dict[str, nn.Parameter], kept: KeptIndices) -> None:
    replaced = {id(before[n]): (n, after[n]) for n in kept}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if id(p) not in replaced:
                continue
            name, new = replaced[id(p)]
            group["params"][i] = new
            state = optimizer.state.pop(p, None)
            if state:
                optimizer.state[new] = {
                    k: (_slice(v, kept[name]) if isinstance(v, torch.Tensor) and v.shape == p.shape else v)
                    for k, v in state.items()
                }
