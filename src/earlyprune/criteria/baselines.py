"""The two baselines every pruning paper compares against: random and magnitude."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def random_importance(params: Mapping[str, nn.Parameter], seed: int = 0) -> dict[str, torch.Tensor]:
    """I.i.d. uniform importance, drawn from a private generator seeded with ``seed``.

    The draws are made on the CPU in parameter order, so the same seed gives the same masks on every
    device and process (needed under DDP), and the caller's global RNG is untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        n: torch.rand(p.shape, generator=generator, dtype=torch.float64).to(p.device)
        for n, p in params.items()
    }


def magnitude_importance(params: Mapping[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """abs(θ): keep the largest weights (the classic magnitude baseline, applied at initialisation)."""
    return {n: p.detach().abs().clone() for n, p in params.items()}
