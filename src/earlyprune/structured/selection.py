"""Which channels stay: a global ranking across groups with a per-group minimum so no layer vanishes."""

from __future__ import annotations

import math

import torch

from ..errors import PruningError
from ..selection import check_sparsity
from .groups import ChannelGroup


def select_channels(
    importance: dict[int, torch.Tensor],
    groups: list[ChannelGroup],
    sparsity: float,
    min_fraction: float = 0.0,
    min_channels: int = 1,
    multiple: int = 1,
) -> dict[int, torch.Tensor]:
    """``{group index: sorted kept channel indices}`` removing a fraction ``sparsity`` of all channels.

    Channels are ranked together across groups (EarlyCroP's node sparsity counts every prunable
    channel/neuron); each group keeps at least ``max(min_channels, ceil(min_fraction * size))`` of its
    best channels, and the total kept is exactly ``round((1 - sparsity) * total)`` where the minimums
    allow it. Ties break by group, then channel index.

    ``multiple > 1`` then rounds each group's kept count up to a multiple of it (or the full width), adding
    the group's next-best channels: widths like 8, 16, 24 run faster than 7 or 13 on oneDNN/cuDNN kernels,
    at the price of keeping slightly more than asked.
    """
    if multiple < 1:
        raise PruningError(f"multiple must be >= 1, got {multiple}")
    sparsity = check_sparsity(sparsity)
    sizes = {g.index: g.size for g in groups}
    for g in groups:
        score = importance.get(g.index)
        if score is None or score.shape != (g.size,):
            raise PruningError(f"importance of group {g.index} must have shape ({g.size},)")
        if not bool(torch.isfinite(score).all()):
            raise PruningError(f"importance of group {g.index} ({g.producers[0]}) has NaN or infinite values")
    total = sum(sizes.values())
    target = round((1.0 - sparsity) * total)
    keep = {g: torch.zeros(n, dtype=torch.bool) for g, n in sizes.items()}
    for g, n in sizes.items():
        floor = min(n, max(min_channels, math.ceil(min_fraction * n)))
        order = torch.sort(importance[g].double(), descending=True, stable=True).indices
        keep[g][order[:floor]] = True
    remaining = target - sum(int(k.sum()) for k in keep.values())
    if remaining > 0:
        flat_scores = torch.cat([importance[g].double().masked_fill(keep[g], -math.inf) for g in sizes])
        order = torch.sort(flat_scores, descending=True, stable=True).indices[:remaining]
        flat_keep = torch.cat([keep[g] for g in sizes])
        flat_keep[order] = True
        keep = dict(zip(sizes, flat_keep.split(list(sizes.values()))))
    if multiple > 1:
        for g, n in sizes.items():
            count = int(keep[g].sum())
            wanted = min(n, -(-count // multiple) * multiple)
            if wanted > count:
                scores = importance[g].double().masked_fill(keep[g], -math.inf)
                keep[g][torch.sort(scores, descending=True, stable=True).indices[: wanted - count]] = True
    return {g: torch.nonzero(k).flatten() for g, k in keep.items()}
