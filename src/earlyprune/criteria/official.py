"""What each criterion's official implementation does differently from its paper, declared once per
criterion (``Criterion.official``) and applied by :func:`earlyprune.presets.resolve` when a caller asks for
``preset="official"``.

An :class:`Official` names the repository and file it reproduces and lists, as plain values, the
settings of ``earlyprune.prune`` / ``prune_channels`` (``rule``, ``train``, ``num_batches``, ``loss_fn``,
``gate_at``) and the criterion options (``reinit``) that code uses, and which of the library's named
schedules it replaces by its own. Nothing here runs a criterion: the importance functions read their
options as always, so ``preset="official"`` and the same settings given one by one give the same masks.

The helpers below are the official codes' own choices that are not already library settings:

* :func:`xavier_redraw_linear`: GraSP's ``reinit=True`` (alecwangcq/GraSP, ``pruner/GraSP.py``) re-draws
  every ``nn.Linear`` weight with Xavier-normal in the copy it scores, in module order, from the global
  generator (seeded with the scoring seed here);
* :func:`nll_on_logits`: the EarlyCroP repository's SNIP and SNAP call ``F.nll_loss`` on the raw logits
  of its networks (which end in a Linear, no log-softmax): the loss is −mean(z_y), not the cross-entropy
  the SNIP paper defines. It is a bug of that code, offered only to reproduce it;
* :func:`earlycrop_schedule`: ``EarlyCroP.py`` starts its schedule k_i = s − (s − b)·0.5^i at b = 0.25
  for targets s <= 0.5 (b = 0.5 above), where the library's ``"crop-it"`` schedule prunes such targets in
  one shot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Rounds of EarlyCroP's schedule before the final one (``--snip_steps 5`` in its ``main.py``: i = 0..5).
EARLYCROP_STEPS = 6


@dataclass(frozen=True)
class Official:
    """A criterion's official implementation, as settings and options of this library.

    Args:
        source: the repository and file reproduced (``"alecwangcq/GraSP, pruner/GraSP.py"``).
        settings: settings of ``earlyprune.prune`` the official code fixes (``rule``, ``train``,
            ``num_batches``, ``loss_fn``).
        options: the criterion's own options it fixes (``reinit=True`` for GraSP).
        schedules: named schedules it replaces: ``{"crop-it": fn(sparsity) -> [sparsities]}``.
        channel_settings: settings of ``earlyprune.prune_channels`` for the structured form (``train``,
            ``num_batches``, ``loss_fn``, ``gate_at``); None when the official code has no structured form
            or does nothing differently there.
        notes: what the preset reproduces, in one line each, for the documentation and ``info``.
    """

    source: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    schedules: Mapping[str, Callable[[float], list[float]]] = field(default_factory=dict)
    channel_settings: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()


@torch.no_grad()
def xavier_redraw_linear(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """Re-draw every ``nn.Linear`` weight of ``model`` in place with ``nn.init.xavier_normal_``, in module
    order, from the global generator (GraSP's ``reinit=True``); under ``masks`` pruned weights stay zero.

    Called on the scored model inside the scoring isolation, so the caller's model is restored after."""
    names = {id(p): n for n, p in model.named_parameters()}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            mask = None if masks is None else masks.get(names.get(id(module.weight), ""))
            if mask is not None:
                module.weight.mul_(mask.to(device=module.weight.device, dtype=module.weight.dtype))


def nll_on_logits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.nll_loss`` on raw logits, −mean(z_y): the EarlyCroP repository's SNIP/SNAP loss (a bug there)."""
    return F.nll_loss(outputs, targets)


def earlycrop_schedule(sparsity: float, steps: int = EARLYCROP_STEPS) -> list[float]:
    """EarlyCroP.py's schedule: k_i = s − (s − b)·0.5^i for i = 0..steps−1, then s, with b = 0.5 for
    s > 0.5 and b = 0.25 otherwise. Steps above s (the official code overshoots a target below 0.25 with
    its first step, which pruning cannot undo) or not above the previous one are dropped."""
    start = 0.5 if sparsity > 0.5 else 0.25
    values = [sparsity - (sparsity - start) * 0.5**i for i in range(steps)] + [sparsity]
    schedule: list[float] = []
    for v in values:
        if 0.0 < v <= sparsity and (not schedule or v > schedule[-1]):
            schedule.append(v)
    return schedule or [sparsity]
