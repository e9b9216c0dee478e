"""The two baselines every pruning paper compares against: random and magnitude, unstructured and
structured."""

from __future__ import annotations

import torch

from ..errors import PruningError
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
    """L2 norm of each channel's filter: its slice of every producer's weights (biases excluded); for
    residual-tied channels the norm runs over all layers writing to the channel. Consumers' input slices
    and BatchNorm scales are not counted: this is the filter-norm baseline. A recurrent layer's hidden unit
    owns its rows in every gate block of every ``weight_ih``/``weight_hh``; a GPT-2 ``Conv1D`` stores its
    weight as (in, out), so its units are columns."""
    modules = dict(scoring.model.named_modules())
    scores = {}
    for g in scoring.groups:
        total = torch.zeros(g.size, dtype=torch.float64)
        for name in g.producers:
            for weight in _producer_weights(modules[name]):
                total += _per_unit_square_norm(weight, g.size, name)
        scores[g.index] = total.sqrt()
    return scores


def _producer_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """The weight matrices of a producer with output units along dim 0 (Conv1D-style ones transposed)."""
    weights = [p.detach() for n, p in module.named_parameters(recurse=False) if n.startswith("weight")]
    if type(module).__name__ == "Conv1D" or hasattr(module, "nf"):
        weights = [w.t() for w in weights]
    return weights


def _per_unit_square_norm(weight: torch.Tensor, units: int, name: str) -> torch.Tensor:
    rows = weight.shape[0]
    if rows % units:
        raise PruningError(f"structured magnitude cannot map the {rows} output rows of {name!r} onto its {units} "
                           "channels; use another structured criterion for this layer")
    blocks = weight.reshape(rows // units, units, -1).double()  # gate blocks of a recurrent layer: 4 for LSTM
    return blocks.pow(2).sum(dim=(0, 2)).cpu()


RANDOM = Criterion(
    "random", paper="baseline", summary="i.i.d. uniform importance, seeded",
    importance=random_importance, channel_importance=random_channel_importance, data="none", train=None,
)
MAGNITUDE = Criterion(
    "magnitude", paper="baseline", summary="abs(θ)",
    importance=magnitude_importance, channel_importance=magnitude_channel_importance, data="none", train=None,
)
