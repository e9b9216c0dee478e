"""Sparsity schedules: the sparsity reached after each round of iterative pruning.

* exponential (SynFlow, Tanaka et al., NeurIPS 2020): density d^(i/n) after round i = 1..n;
* CroP-it (EarlyCroP, Rachwan et al., ICML 2022): k_i = s − (s − 0.5)·0.5^i for i = 0..5, then s;
* or an explicit non-decreasing list of sparsities ending at the target.

When to prune (EarlyCroP's weight-distance trigger) lives in :mod:`earlyprune.triggers`.
"""

from __future__ import annotations

from typing import Any

from .errors import PruningError
from .selection import check_sparsity


def exponential_schedule(sparsity: float, iterations: int) -> list[float]:
    """SynFlow's schedule: density d^(i/n) after round i = 1..n, returned as sparsities."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise PruningError(f"iterations must be an integer >= 1, got {iterations!r}")
    density = 1.0 - sparsity
    return [1.0 - density ** (i / iterations) for i in range(1, iterations + 1)]


def crop_it_schedule(sparsity: float, steps: int = 6) -> list[float]:
    """EarlyCroP's iterative schedule: k_i = s − (s − 0.5)·0.5^i for i = 0..steps−1, then s.

    Steps at or below zero or not below ``s`` are dropped, so a target under 50% is reached in one step.
    """
    values = [sparsity - (sparsity - 0.5) * 0.5**i for i in range(steps)] + [sparsity]
    schedule: list[float] = []
    for v in values:
        if 0.0 < v <= sparsity and (not schedule or v > schedule[-1]):
            schedule.append(v)
    return schedule or [sparsity]


def schedule_targets(sparsity: float, schedule: Any = None, iterations: int = 1) -> list[float]:
    """The sparsity reached after each round of pruning.

    ``schedule``: ``None``/``"exponential"`` (SynFlow's d^(i/n) over ``iterations`` rounds; one round is
    one shot), ``"crop-it"`` (EarlyCroP's), or an explicit non-decreasing list ending at ``sparsity``.
    """
    if schedule is None or schedule == "exponential":
        return exponential_schedule(sparsity, iterations)
    if schedule == "crop-it":
        return crop_it_schedule(sparsity)
    if isinstance(schedule, str):
        raise PruningError(f"schedule must be 'exponential', 'crop-it' or a list of sparsities, got {schedule!r}")
    steps = [check_sparsity(s, "schedule entry") for s in schedule]
    if not steps or any(b < a for a, b in zip(steps, steps[1:])) or abs(steps[-1] - sparsity) > 1e-12:
        raise PruningError(f"schedule must be non-decreasing and end at sparsity {sparsity}, got {list(schedule)}")
    return steps
