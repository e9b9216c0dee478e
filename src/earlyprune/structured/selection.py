"""Which channels stay: one global ranking across groups, with a per-group minimum so no layer vanishes.

EarlyCroP's structured sparsity is node sparsity: the fraction of all prunable channels/neurons removed
(Rachwan et al., ICML 2022). As in the official code (``SNAP.handle_pruning`` with ``CroPStructured``,
``norm_factor = 1``), the raw importances of all groups are ranked together, with no per-group
normalisation: a layer whose channels matter less to the loss or to the gradient flow loses more of them,
which is the point of a global criterion. (SNAP divides by the total loss, a single scalar that does not
change the ranking.) Differences from the official selection, both deliberate: the official code keeps
every channel scoring >= the threshold (more than asked on ties) and adds back one channel to a layer
left empty; here exactly ``round((1 - sparsity) * total)`` channels stay (ties broken by group, then
channel index), with each group's minimum reserved first. Attention heads go whole (see
:func:`select_channels`).
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

    A group whose channels are attention heads (``group.block`` channels each) is kept or removed by whole
    head: a head scores its channels' mean importance and counts ``block`` channels; heads are taken best
    first while they fit the budget left, so the total is exact when single channels are there to fill
    it (else it falls short by less than a head). ``min_fraction``/``min_channels`` count heads there.

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
    blocks = {g.index: _block(g) for g in groups}
    # Units: single channels, or whole heads (a head's score is its channels' mean, comparable with single
    # channels; it takes `block` channels of the budget).
    unit_scores = {g: _unit_scores(importance[g], blocks[g]) for g in sizes}
    keep_units = {g: torch.zeros(s.numel(), dtype=torch.bool) for g, s in unit_scores.items()}
    for g, scores in unit_scores.items():
        n = scores.numel()
        floor = min(n, max(min_channels, math.ceil(min_fraction * n)))
        order = torch.sort(scores, descending=True, stable=True).indices
        keep_units[g][order[:floor]] = True
    remaining = target - sum(int(k.sum()) * blocks[g] for g, k in keep_units.items())
    if remaining > 0:
        flat_scores = torch.cat([unit_scores[g].masked_fill(keep_units[g], -math.inf) for g in sizes])
        flat_keep = torch.cat([keep_units[g] for g in sizes])
        flat_width = torch.cat([torch.full((k.numel(),), blocks[g], dtype=torch.long) for g, k in keep_units.items()])
        order = torch.sort(flat_scores, descending=True, stable=True).indices
        if bool((flat_width == 1).all()):
            flat_keep[order[:remaining]] = True
        else:  # best first; a head that does not fit the budget left is skipped for smaller units
            for unit in order.tolist():
                if remaining <= 0:
                    break
                if not flat_keep[unit] and int(flat_width[unit]) <= remaining:
                    flat_keep[unit] = True
                    remaining -= int(flat_width[unit])
        keep_units = dict(zip(sizes, flat_keep.split([k.numel() for k in keep_units.values()])))
    if multiple > 1:
        for g, n in sizes.items():
            if blocks[g] > 1:
                continue  # whole heads already
            count = int(keep_units[g].sum())
            wanted = min(n, -(-count // multiple) * multiple)
            if wanted > count:
                scores = unit_scores[g].masked_fill(keep_units[g], -math.inf)
                keep_units[g][torch.sort(scores, descending=True, stable=True).indices[: wanted - count]] = True
    return {g: _channels(keep_units[g], blocks[g]) for g in sizes}


def _block(group: ChannelGroup) -> int:
    block = int(getattr(group, "block", 1) or 1)
    if group.size % block:
        raise PruningError(f"group {group.index} ({group.size} channels) is not a whole number of heads of {block}")
    return block


def _unit_scores(score: torch.Tensor, block: int) -> torch.Tensor:
    score = score.double()
    return score if block == 1 else score.view(-1, block).mean(dim=1)


def _channels(keep_units: torch.Tensor, block: int) -> torch.Tensor:
    units = torch.nonzero(keep_units).flatten()
    if block == 1:
        return units
    return (units[:, None] * block + torch.arange(block)).flatten()
