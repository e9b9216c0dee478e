"""Presets: the paper's method (``"paper"``, the default) or exactly what its official code does
(``"official"``), for :func:`earlyprune.score`, :func:`~earlyprune.prune`,
:func:`~earlyprune.prune_channels` and :class:`~earlyprune.EarlyPruner`.

Each criterion declares what its official implementation does differently in its own module
(``Criterion.official``, an :class:`earlyprune.criteria.official.Official`): settings of the call (the
selection ``rule``, the scoring mode ``train``, ``num_batches``, ``loss_fn``, structured ``gate_at``), its
own options (GraSP's ``reinit``) and the named schedules it replaces. :func:`resolve` applies them, the
one place a preset is read; a criterion without a declaration (``random``, ``magnitude``, a user's) is the
same under both presets. The trigger of early pruning (EarlyCroP's, whatever the criterion) measures the
prunable weights under ``"paper"`` and all parameters under ``"official"`` (:func:`trigger_parameters`).

A preset replaces the defaults of the settings it fixes. Giving one of them another value as well is an
error (which of the two was meant cannot be known); giving the preset's own value is accepted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .criteria import Criterion
from .errors import PruningError
from .prunable import prunable_parameters

PRESETS = ("paper", "official")
DEFAULT_PRESET = "paper"


def check_preset(preset: Any) -> str:
    """``preset`` if it is one of :data:`PRESETS`, else a clear error."""
    if preset not in PRESETS:
        raise PruningError(f"preset must be one of {PRESETS} ('paper': the paper's method, the default; "
                           f"'official': exactly the official implementation), got {preset!r}")
    return preset


@dataclass(frozen=True)
class Resolved:
    """The settings and options a call runs with under a preset, and what the preset changed."""

    settings: dict[str, Any]
    options: dict[str, Any]
    changed: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def info(self, preset: str) -> dict[str, Any]:
        """What to record in a result's ``info``: the preset, the code reproduced, what it changed."""
        changed = {k: getattr(v, "__name__", v) for k, v in self.changed.items()}
        return {"preset": preset, "official_source": self.source, "preset_changed": changed}


def resolve(
    criterion: Criterion,
    preset: str,
    call: Callable[..., Any],
    given: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    structured: bool = False,
    class_targets: bool = True,
) -> Resolved:
    """The settings (``given``: the caller's values of ``call``'s settings a preset may fix) and criterion
    ``options`` to run ``criterion`` with under ``preset``.

    Under ``"official"`` each setting the criterion's official code fixes (its channel settings when
    ``structured``) replaces ``call``'s default, and each option it fixes replaces the criterion's
    default; a setting ``call`` does not take (``rule`` for ``score``) is skipped, and so is a loss on a
    task without class targets (the official codes' losses are classification losses). A value given
    explicitly that differs from both is an error naming both.
    """
    check_preset(preset)
    settings, chosen = dict(given), dict(options)
    official = criterion.official
    if preset == DEFAULT_PRESET or official is None:
        return Resolved(settings, chosen)
    fixed = official.channel_settings if structured else official.settings
    defaults = {n: p.default for n, p in inspect.signature(call).parameters.items()}
    changed: dict[str, Any] = {}
    for name, value in (fixed or {}).items():
        if name not in settings or (name == "loss_fn" and not class_targets):
            continue
        _take(settings, name, value, defaults[name], criterion, changed)
    for name, value in official.options.items():
        if structured and not _channel_option(criterion, name):
            continue
        _take(chosen, name, value, criterion.options[name], criterion, changed)
    return Resolved(settings, chosen, changed, official.source)


def schedule(criterion: Criterion, preset: str, schedule: Any, sparsity: float) -> Any:
    """``schedule``, or the official code's own rounds where it replaces that named schedule (EarlyCroP's
    ``"crop-it"`` starts at 0.25 for targets <= 0.5)."""
    official = criterion.official
    if preset == DEFAULT_PRESET or official is None or not isinstance(schedule, str):
        return schedule
    replace = official.schedules.get(schedule)
    return schedule if replace is None else replace(sparsity)


def trigger_parameters(model: nn.Module, preset: str) -> dict[str, nn.Parameter]:
    """The parameters EarlyCroP's weight-distance trigger measures: the prunable weights (``"paper"``:
    the weights the method is about), or every parameter, biases and BatchNorm included (``"official"``:
    ``DefaultTrainer`` flattens ``model.parameters()``)."""
    check_preset(preset)
    if preset == "official":
        return dict(model.named_parameters())
    return prunable_parameters(model)


def _take(values: dict[str, Any], name: str, value: Any, default: Any, criterion: Criterion,
          changed: dict[str, Any]) -> None:
    current = values.get(name, default)
    if current is not default and current != default and not _same(current, value):
        raise PruningError(
            f"preset='official' sets {name}={getattr(value, '__name__', value)!r} for {criterion.name!r} (its "
            f"official code), but {name}={getattr(current, '__name__', current)!r} was given too: drop {name}, "
            f"or use preset='paper' with the settings you want"
        )
    values[name] = value
    if not _same(value, default):
        changed[name] = value


def _same(a: Any, b: Any) -> bool:
    if callable(a) or callable(b):
        return a is b
    return a == b


def _channel_option(criterion: Criterion, name: str) -> bool:
    """Whether option ``name`` is one of the criterion's channel-importance function's."""
    fn = criterion.channel_importance
    return fn is not None and name in inspect.signature(fn).parameters
