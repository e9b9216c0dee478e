"""The two baselines every pruning paper compares against: random and magnitude, unstructured and
structured."""

from __future__ import annotations

import torch

from .spec import Criterion, Scoring


def random_importance(scoring: Scoring) -> dict[str, torch.Tensor]:
    """I.i.d. uniform importance, drawn from a private generator seeded with the scoring seed.

    The draws are made on the CPU in parameter order, so the same seed gives the same masks on every
    device and process (needed under DDP), and the caller's global RNG is untouched.
    """
    generator = torch.Generator().manual_seed(scoring.seed)
    return {
        n: torch.rand(p.shape, generator=generator, dtype=torch.float64).to(p.device)
        for n, p in scoring.params.items()
    }


def random_channel_importance(scoring: Scoring) -> dict[int, torch.Tensor]:
    """I.i.d. uniform importance per channel, from a private generator seeded with the scoring seed."""
    generator = torch.Generator().manual_seed(scoring.seed)
    return {g.index: torch.rand(g.size, generator=generator, dtype=torch.float64) for g in scoring.groups}


def magnitude_importance(scoring: Scoring) -> dict[str, torch.Tensor]:
    """abs(θ): keep the largest weights (the classic magnitude baseline, applied at initialisation)."""
    return {n: p.detach().abs().clone() for n, p in scoring.params.items()}


def magnitude_channel_importance(scoring: Scoring) -> dict[int, torch.Tensor]:
    """L2 norm of each channel's filter: its slice of every producer's weight (bias excluded); for
    residual-tied channels the norm runs over all layers writing to the channel. Consumers' input slices
    and BatchNorm scales are not counted: this is the filter-norm baseline."""
    modules = dict(scoring.model.named_modules())
    scores = {}
    for g in scoring.groups:
        total = torch.zeros(g.size, dtype=torch.float64)
        for name in g.producers:
            weight = modules[name].weight.detach()
            total += weight.reshape(weight.shape[0], -1).double().pow(2).sum(1).cpu()
        scores[g.index] = total.sqrt()
    return scores


RANDOM = Criterion(
    "random", paper="baseline", summary="i.i.d. uniform importance, seeded",
    importance=random_importance, channel_importance=random_channel_importance, data="none", train=None,
)
MAGNITUDE = Criterion(
    "magnitude", paper="baseline", summary="abs(θ)",
    importance=magnitude_importance, channel_importance=magnitude_channel_importance, data="none", train=None,
)
