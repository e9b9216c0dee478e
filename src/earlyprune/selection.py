"""From importance to masks: global or per-layer selection, the layer-collapse guard (the sparsity of each
round of iterative pruning comes from :mod:`earlyprune.schedules`).

Two selection rules:

* ``"topk"`` (default): keep exactly ``round((1 - sparsity) * N)`` weights, the most important ones;
  ties are broken deterministically by position (earlier parameter, then lower flat index, wins).
* ``"official"``: the rule of the SynFlow repository (ganguli-lab/Synaptic-Flow): with
  ``k = floor(sparsity * N)``, prune every weight whose score is ``<=`` the k-th smallest score. With ties
  at the threshold it prunes more than asked; use it to reproduce published numbers exactly.

Weights already pruned (``current`` masks) stay pruned: their importance is treated as −∞.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import LayerCollapseError, PruningError

SCOPES = ("global", "layer")
RULES = ("topk", "official")
COLLAPSE_POLICIES = ("warn", "raise", "keep_min")


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Return ``sparsity`` as a float, or raise if it is not a number in [0, 1)."""
    if isinstance(sparsity, torch.Tensor) and sparsity.numel() == 1 and sparsity.is_floating_point():
        sparsity = sparsity.item()
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):  # numpy floats are Real
        raise PruningError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise PruningError(
            f"{name} must be in [0, 1) (the fraction of weights removed; 0.9 keeps 10%), got {sparsity!r}"
        )
    return value


def check_importance(importance: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size]) -> None:
    """Raise a clear error for missing, mis-shaped, NaN or infinite importance."""
    for name, shape in shapes.items():
        if name not in importance:
            raise PruningError(f"importance is missing for parameter {name!r}")
        score = importance[name]
        if score.shape != shape:
            raise PruningError(
                f"importance of {name!r} has shape {tuple(score.shape)}, the parameter {tuple(shape)}"
            )
        bad = ~torch.isfinite(score)
        if bool(bad.any()):
            kinds = "NaN" if bool(torch.isnan(score).any()) else "infinite"
            raise PruningError(
                f"importance of {name!r} has {int(bad.sum())} {kinds} value(s); the criterion overflowed or the "
                "model produced NaN (for synflow, try double=True; otherwise check the data and initialisation)"
            )


def select(
    importance: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    current: Mapping[str, torch.Tensor] | None = None,
    rule: str = "topk",
    on_collapse: str = "warn",
    min_per_layer: int = 1,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Masks (True = keep) that prune a fraction ``sparsity`` of all weights in ``importance``.

    Returns ``(masks, collapsed)`` where ``collapsed`` names the layers left with no weight; reporting
    them is the caller's job (see :func:`collapse_message`). ``on_collapse``: ``"warn"`` (report),
    ``"raise"``
    (:class:`LayerCollapseError`) or ``"keep_min"`` (each layer keeps at least ``min_per_layer`` of its
    most important weights; the total stays exact, the least important weights elsewhere give way).
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise PruningError(f"scope must be one of {SCOPES}, got {scope!r}")
    if rule not in RULES:
        raise PruningError(f"rule must be one of {RULES}, got {rule!r}")
    if on_collapse not in COLLAPSE_POLICIES:
        raise PruningError(f"on_collapse must be one of {COLLAPSE_POLICIES}, got {on_collapse!r}")
    if on_collapse == "keep_min" and rule == "official":
        raise PruningError(
            "on_collapse='keep_min' needs rule='topk': the official threshold rule cannot reserve a minimum "
            "per layer; use rule='topk', or on_collapse='warn'/'raise' with the official rule"
        )
    if not importance:
        raise PruningError("nothing to prune: the importance is empty (no prunable parameters)")
    check_importance(importance, {n: s.shape for n, s in importance.items()})
    names = list(importance)
    scores = {n: _masked_scores(importance[n], None if current is None else current.get(n)) for n in names}

    guard = min_per_layer if on_collapse == "keep_min" else 0
    if scope == "global":
        masks = _select_group(scores, sparsity, rule, guard)
    else:
        masks = {}
        for n in names:
            masks.update(_select_group({n: scores[n]}, sparsity, rule, guard))

    collapsed = [n for n in names if masks[n].numel() and not bool(masks[n].any())]
    if collapsed and on_collapse == "raise":
        raise LayerCollapseError(collapse_message(collapsed))
    return masks, collapsed


def collapse_message(collapsed: Sequence[str]) -> str:
    """What to tell the user about layers pruned to nothing, and what to do about it."""
    return (
        f"layer collapse: {len(collapsed)} layer(s) pruned to nothing, which cuts the network: "
        f"{', '.join(collapsed)}. Pass on_collapse='keep_min' to keep a minimum per layer, "
        "on_collapse='raise' to stop, scope='layer', or a lower sparsity"
    )


def _masked_scores(score: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
    flat = score.detach().to(torch.float64).flatten().cpu()
    if current is not None:
        flat = flat.masked_fill(~current.to(torch.bool).flatten().cpu(), -math.inf)
    return flat


def _select_group(
    scores: Mapping[str, torch.Tensor], sparsity: float, rule: str, min_per_layer: int
) -> dict[str, torch.Tensor]:
    """Select over the concatenation of ``scores`` (flat float64 CPU tensors)."""
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    flat = torch.cat([scores[n] for n in names])
    total = flat.numel()
    keep = torch.zeros(total, dtype=torch.bool)
    if rule == "official":
        k = int((sparsity) * total)  # the SynFlow code's k = int((1 - density) * N)
        if k < 1:
            keep[:] = True
        else:
            threshold = torch.kthvalue(flat, k).values
            keep = flat > threshold
    else:
        n_keep = round((1.0 - sparsity) * total)
        forced = _forced_minimum(scores, names, sizes, min_per_layer)
        keep[forced] = True
        remaining = n_keep - int(keep.sum())
        if remaining > 0:
            candidates = flat.clone()
            candidates[keep] = -math.inf
            order = torch.sort(candidates, descending=True, stable=True).indices
            keep[order[:remaining]] = True
        elif remaining < 0:
            raise PruningError(
                f"the per-layer minimum ({min_per_layer} x {len(names)} layers) needs more weights than the "
                f"{n_keep} that sparsity {sparsity} keeps; lower min_per_layer or the sparsity"
            )
    # Weights pruned before stay pruned, whatever the rule did with their -inf score.
    keep &= flat > -math.inf
    return {n: part for n, part in zip(names, keep.split(sizes))}


def _forced_minimum(
    scores: Mapping[str, torch.Tensor], names: Sequence[str], sizes: Sequence[int], min_per_layer: int
) -> torch.Tensor:
    """Flat indices of each layer's ``min_per_layer`` most important (still unpruned) weights."""
    if min_per_layer <= 0:
        return torch.zeros(0, dtype=torch.long)
    picked, offset = [], 0
    for name, size in zip(names, sizes):
        score = scores[name]
        alive = int((score > -math.inf).sum())
        count = min(min_per_layer, alive)
        if count:
            order = torch.sort(score, descending=True, stable=True).indices[:count]
            picked.append(order + offset)
        offset += size
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)


def reshape_like(flat_masks: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give each flat mask the shape and device of the tensor of the same name in ``like``."""
    return {n: m.view(like[n].shape).to(like[n].device) for n, m in flat_masks.items()}
