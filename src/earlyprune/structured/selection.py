"""Which channels stay: one global ranking across groups, with a per-group minimum so no layer vanishes.

EarlyCroP's structured sparsity is node sparsity: the fraction of all prunable channels/neurons removed
(Rachwan et al., ICML 2022). As in the official code (``SNAP.handle_pruning`` with ``CroPStructured``,
``norm_factor = 1``), the raw importances of all groups are ranked together, with no per-group
normalisation: a layer whose channels matter less to the loss or to the gradient flow loses more of them,
which is the point of a global criterion. (SNAP divides by the total loss, a single scalar that does not
change the ranking.) Differences from the official selection, both deliberate: the official code keeps
every channel scoring >= the threshold (more than asked on ties) and adds back one channel to a layer
left empty; here exactly ``round((1 - sparsity) * total)`` channels stay (ties broken by group, then
channel index), with each group's minimum reserved first.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import PruningError
from ..selection import check_sparsity
from .groups import ChannelGroup, GroupPlan, as_groups


def select_channels(
    importance: dict[int, torch.Tensor],
    groups: GroupPlan | Sequence[ChannelGroup],
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
    groups = as_groups(groups)
    if multiple < 1:
        raise PruningError(f"multiple must be >= 1, got {multiple}")
    if not 0.0 <= min_fraction <= 1.0:
        raise PruningError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if min_channels < 0:
        raise PruningError(f"min_channels must be >= 0, got {min_channels}")
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
