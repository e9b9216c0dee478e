"""The sanity checks of Frankle, Dziugaite, Roy, Carbin ("Pruning Neural Networks at Initialization: Why
are We Missing the Mark?", ICLR 2021), as options of :func:`earlyprune.prune` (``ablation=...``).

Each one breaks a different part of what a pruning method decides, to see whether that part matters:

* ``"shuffle"``: after pruning, each layer's mask is permuted uniformly at random within the layer, so
  every layer keeps exactly its number of weights (its density) but not *which* weights. Frankle et al.
  find SNIP, GraSP and SynFlow nearly unchanged by this: what they carry is the per-layer proportions.
* ``"reinit"``: after pruning, the kept weights are re-drawn from the initialisation distribution (the
  masks stay): is the method exploiting the particular initial values? Frankle et al.: no.
* ``"invert"``: the scores are negated before every round of selection, so the *least* important weights
  are kept (the exact complement ranking: ties keep their order by position). Frankle et al. find GraSP
  unharmed (even improved) by it, the other methods badly harmed.

Shuffle and reinit draw from a private generator seeded with the pruning ``seed`` (the caller's global
random state is untouched); invert is deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .errors import PruningError

ABLATIONS = ("shuffle", "reinit", "invert")

#: Offset added to the pruning seed for the ablations' generators, so that they do not repeat the draws of
#: a criterion seeded with the same seed (``random``).
_SEED_OFFSET = 7919


def check_ablation(ablation: str | None) -> str | None:
    """``ablation`` (None or ``"none"``: no ablation, returned as None) or a clear error."""
    if ablation is None or ablation == "none":
        return None
    if ablation not in ABLATIONS:
        raise PruningError(f"ablation must be one of {ABLATIONS} (Frankle et al.'s sanity checks) or None, "
                           f"got {ablation!r}")
    return ablation


def inverted(importance: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The importance negated: selecting the most important of it keeps the least important weights."""
    return {n: -score for n, score in importance.items()}


def shuffled(masks: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Each mask permuted uniformly at random within its layer (its number of kept weights unchanged).

    The permutations are drawn on the CPU, layer by layer in order, from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed + _SEED_OFFSET)
    result = {}
    for name, mask in masks.items():
        flat = mask.flatten()
        order = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        result[name] = flat[order].view_as(mask)
    return result


@torch.no_grad()
def reinitialise_kept(model: nn.Module, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor],
                      scheme: str | None, seed: int) -> str:
    """Re-draw the weights ``params`` of ``model`` from the initialisation ``scheme`` (a name of
    :mod:`earlyprune.models.init`; None: each module's ``reset_parameters``, PyTorch's default), keeping
    ``masks``: pruned weights stay zero. Only these weights change (biases and norms keep their values).
    Returns the scheme used.

    The draw is made on a copy of the model (so that every scheme, fan-in and module type is exactly the
    one the model was built with) under a private seed; the caller's random state is untouched."""
    from .models.init import SCHEMES, initialize

    if scheme is not None and scheme not in SCHEMES:
        raise PruningError(f"the reinit ablation's init_scheme must be one of {SCHEMES} or None (PyTorch's "
                           f"default), got {scheme!r}")
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        torch.manual_seed(seed + _SEED_OFFSET)
        initialize(fresh, scheme or "default")
    drawn = dict(fresh.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    for name, param in params.items():
        source = drawn[names[id(param)]]
        mask = masks[name].to(device=param.device, dtype=param.dtype)
        param.copy_(source * mask)
    return scheme or "default"


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
