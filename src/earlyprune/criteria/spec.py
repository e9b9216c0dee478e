"""The declaration every criterion makes: :class:`Criterion`, and :class:`Scoring`, what it is given.

A criterion is one object: its name and paper, an importance function (higher = keep, one tensor of the
parameter's shape per scored parameter), optionally a channel-importance function for structured pruning
(one value per channel of each channel group), what data it needs, the mode it scores in, how many rounds
it prunes in by default, and its options. The options are read from the importance functions' signatures:
every keyword-only parameter with its default, so an option is declared exactly once::

    def my_importance(scoring: Scoring, *, power: float = 2.0) -> dict[str, torch.Tensor]:
        return {n: p.detach().abs() ** power for n, p in scoring.params.items()}

    MINE = Criterion("mine", paper="me, 2026", importance=my_importance, data="none")
    ep.prune(model, MINE, 0.9, power=3.0)

``earlyprune.score``, ``prune``, ``prune_channels`` and ``EarlyPruner`` all read the same declaration.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..batches import Batch
from ..errors import PruningError
from ..loss import LossFn
from .official import Official

#: What a criterion needs to score: nothing, the batches as given, or a class-balanced set drawn from a
#: loader (GraSP's 10 examples per class; batches given directly are used as they are).
DATA_NEEDS = ("none", "batches", "class_balanced")


@dataclass(frozen=True)
class Scoring:
    """What an importance function is given.

    ``model`` is in the criterion's mode, with pruned weights already zero, and everything done to it is
    undone afterwards (weights, buffers, modes, gradients, RNG). ``params`` are the weights to score
    (``{name: parameter}``); ``batches`` the scoring data (None for data-free criteria given none);
    ``masks`` the current keep-masks (None before the first prune); ``groups`` the channel groups when
    scoring channels.
    """

    model: nn.Module
    params: Mapping[str, nn.Parameter]
    batches: Sequence[Batch] | None
    loss_fn: LossFn
    masks: Mapping[str, torch.Tensor] | None = None
    seed: int = 0
    groups: Sequence[Any] | None = None


ImportanceFn = Callable[..., Mapping[str, torch.Tensor]]
ChannelImportanceFn = Callable[..., Mapping[int, torch.Tensor]]


@dataclass(frozen=True)
class Criterion:
    """One pruning criterion, declared once.

    Args:
        name: lower-case name (``"snip"``), as given to ``earlyprune.prune``.
        paper: where it comes from (authors, title, venue).
        importance: ``fn(scoring, *, option=default, ...) -> {param name: tensor}``, higher = keep.
        summary: the formula in one line, for :func:`earlyprune.methods`.
        channel_importance: ``fn(scoring, *, ...) -> {group index: tensor of the group's size}`` for
            structured pruning, or None when the criterion has no structured form.
        data: ``"none"``, ``"batches"`` or ``"class_balanced"`` (see :data:`DATA_NEEDS`).
        train: the mode it scores in: True train, False eval, None the model's modes as they are.
        iterations: rounds of pruning by default (SynFlow: 100, on the exponential schedule).
        schedule: the schedule ``prune`` uses by default (``"crop-it"`` for the iterative variants); when
            set, the rounds follow it and ``iterations`` is refused.
        base: for a variant (:meth:`variant`), the name of the criterion it iterates.
        official: what the official implementation does differently (:class:`.official.Official`),
            applied with ``preset="official"`` (:mod:`earlyprune.presets`); None when it does nothing
            differently or has no public code.

    ``options`` (not an argument) maps every option to its default, read from the keyword-only
    parameters of ``importance`` and ``channel_importance``.
    """

    name: str
    paper: str
    importance: ImportanceFn
    summary: str = ""
    channel_importance: ChannelImportanceFn | None = None
    data: str = "batches"
    train: bool | None = True
    iterations: int = 1
    schedule: str | None = None
    base: str | None = None
    official: Official | None = field(default=None, repr=False, compare=False)
    options: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.lower():
            raise PruningError(f"a criterion's name must be a non-empty lower-case string, got {self.name!r}")
        if not callable(self.importance):
            raise PruningError(f"criterion {self.name!r}: importance must be a function, got {self.importance!r}")
        if self.channel_importance is not None and not callable(self.channel_importance):
            raise PruningError(f"criterion {self.name!r}: channel_importance must be a function or None")
        if self.data not in DATA_NEEDS:
            raise PruningError(f"criterion {self.name!r}: data must be one of {DATA_NEEDS}, got {self.data!r}")
        if self.train not in (True, False, None):
            raise PruningError(f"criterion {self.name!r}: train must be True, False or None, got {self.train!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise PruningError(f"criterion {self.name!r}: iterations must be an integer >= 1")
        options: dict[str, Any] = {}
        for fn in (self.importance, self.channel_importance):
            if fn is not None:
                for option, default in _declared_options(self.name, fn).items():
                    options.setdefault(option, default)
        object.__setattr__(self, "options", options)

    @property
    def needs_data(self) -> bool:
        """Whether scoring needs batches (data-free criteria may still use one for the input's shape)."""
        return self.data != "none"

    @property
    def structured(self) -> bool:
        """Whether the criterion can score channels (``earlyprune.prune_channels``)."""
        return self.channel_importance is not None

    def variant(self, name: str, paper: str, summary: str = "", **changes: Any) -> "Criterion":
        """The same criterion under another name with other defaults (e.g. an iterative schedule)."""
        return dataclasses.replace(self, name=name, paper=paper, summary=summary or self.summary,
                                   base=self.base or self.name, **changes)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise a clear error for options this criterion does not declare."""
        unknown = [k for k in options if k not in self.options]
        if unknown:
            known = ", ".join(self.options) or "none"
            raise PruningError(f"unknown option(s) {unknown} for method {self.name!r}; its options: {known}")


def call_with_options(fn: Callable[..., Any], scoring: Scoring, options: Mapping[str, Any]) -> Any:
    """``fn(scoring, **options)`` with only the options ``fn`` declares."""
    declared = _keyword_only(fn)
    return fn(scoring, **{k: v for k, v in options.items() if k in declared})


def _keyword_only(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def _declared_options(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` with their defaults; a clear error for any other shape."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise PruningError(f"criterion {name!r}: cannot read the signature of {fn!r}: {exc}") from exc
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 1 or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise PruningError(
            f"criterion {name!r}: {getattr(fn, '__name__', fn)} must take the Scoring as its one positional "
            "argument and its options as keyword-only arguments with defaults: fn(scoring, *, option=default)"
        )
    options = {}
    for p in parameters[1:]:
        if p.default is p.empty:
            raise PruningError(f"criterion {name!r}: option {p.name!r} of {fn.__name__} needs a default")
        options[p.name] = p.default
    return options
