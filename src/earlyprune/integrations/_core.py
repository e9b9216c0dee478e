"""What the Lightning and Hugging Face callbacks share: when to prune, how, and keeping the training
framework's optimizers working afterwards.

:class:`TrainingPruner` is framework-neutral. A callback calls :meth:`TrainingPruner.start` once before the
first training step and :meth:`TrainingPruner.epoch_end` after each epoch's training, handing over the
module being trained and the framework's optimizers; it gets back the event to log. The pruning itself
is the library's: :func:`earlyprune.prune` / :func:`earlyprune.prune_channels` at initialisation,
:class:`earlyprune.EarlyPruner` (EarlyCroP's weight-distance trigger, a cap or a fixed epoch) early in
training, :class:`earlyprune.ActivationDensityPruner` during training.

The optimizers the framework built keep training the model:

* unstructured masks are attached to every optimizer (pruned entries of its state zeroed, the weights
  re-masked after each step), as :meth:`earlyprune.masking.MaskBinding.attach` does;
* after structured surgery every optimizer is remapped in place: the removed Parameters in its
  ``param_groups`` are replaced by the new, narrower ones and their state (momentum, Adam moments) is
  sliced to the kept channels, so an LR scheduler holding the optimizer goes on at the same step. Building
  the optimizers again (Lightning's ``strategy.setup_optimizers``) would instead lose the momentum and
  restart every scheduler from step 0.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..activation_density import ActivationDensityPruner
from ..batches import first_example
from ..criteria import resolve
from ..early import EarlyPruner, PruneEvent
from ..errors import PruningError
from ..masking import binding as mask_binding
from ..metrics import report
from ..pruning import prune
from ..selection import check_sparsity
from ..structured import prune_channels
from ..structured.surgery import _slice_optimizer
from ..triggers import DEFAULT_RELATIVE_THRESHOLD

WHEN = ("init", "early")
DURING = "activation_density"  # the method that prunes during training, every prune_every epochs

BatchFn = Callable[[Any], tuple[Any, torch.Tensor]]


def plain_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``): both keep it as ``.optimizer``; accelerate's subclasses
    ``torch.optim.Optimizer`` yet steps the inner one, where step hooks must go."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):  # a wrapper (even a subclass)
        optimizer = optimizer.optimizer
    return optimizer


@dataclass
class TrainingEvent:
    """A prune made by a callback: what the library reported (:class:`~earlyprune.early.PruneEvent` or
    :class:`~earlyprune.activation_density.ResizeEvent`) and what it did, as flat numbers to log."""

    kind: str  # "init", "early" or "activation_density"
    epoch: int
    details: Any

    def metrics(self, prefix: str = "prune/") -> dict[str, float]:
        """Numbers for a logger: epoch, sparsity, parameters (and non-zero ones) and FLOPs before and after."""
        values = self.details.as_dict()
        out = {"epoch": float(self.epoch)}
        for key in ("sparsity", "params_before", "params_after", "nonzero_before", "nonzero_after", "flops_before",
                    "flops_after", "seconds"):
            if values.get(key) is not None:
                out[key] = float(values[key])
        return {prefix + k: v for k, v in out.items()}


class TrainingPruner:
    """When and how a training framework's callback prunes (see the module docstring).

    Args:
        method: a criterion name or :class:`~earlyprune.Criterion` (default ``"crop"``), or
            ``"activation_density"`` to resize the network during training by its ReLU densities.
        sparsity: weight sparsity (unstructured) or fraction of channels removed (structured).
        when: ``"init"`` (before the first step) or ``"early"`` (EarlyCroP's trigger, ``at_epoch`` or
            ``cap_epoch``); not used by ``activation_density``.
        structured: remove whole channels physically (``activation_density`` always does).
        data: scoring batches (``(inputs, targets)`` pairs) or a loader; default: the first
            ``score_batches`` batches of the training dataloader, through ``batch_fn``.
        score_batches: how many training batches are taken for scoring when ``data`` is not given.
        at_epoch, cap_epoch, relative_threshold, schedule, task: as for :class:`earlyprune.EarlyPruner`.
        prune_every, last_epoch, min_fraction, count_every: as for
            :class:`earlyprune.ActivationDensityPruner`.
        **prune_options: passed to :func:`earlyprune.prune` / :func:`earlyprune.prune_channels`
            (``loss_fn``, ``scope``, ``exclude``, criterion options, ...).
    """

    def __init__(
        self,
        method: Any = "crop",
        sparsity: float = 0.9,
        *,
        when: str = "early",
        structured: bool = False,
        data: Any = None,
        score_batches: int = 1,
        at_epoch: int | None = None,
        cap_epoch: int | None = None,
        relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
        schedule: Any = None,
        task: Any = "classification",
        prune_every: int = 1,
        last_epoch: int | None = None,
        min_fraction: float = 0.05,
        count_every: int = 4,
        **prune_options: Any,
    ):
        self.during = isinstance(method, str) and method.lower() == DURING
        if not self.during:
            resolve(method)  # an unknown method is refused when the callback is made, not at fit time
            if when not in WHEN:
                raise PruningError(f"when must be one of {WHEN} (or method='activation_density'), got {when!r}")
            check_sparsity(sparsity)
        if score_batches < 1:
            raise PruningError(f"score_batches must be >= 1, got {score_batches}")
        self.method, self.sparsity, self.when = method, sparsity, ("during" if self.during else when)
        self.structured = True if self.during else structured
        self.data, self.score_batches = data, score_batches
        self.early_options = dict(at_epoch=at_epoch, cap_epoch=cap_epoch, relative_threshold=relative_threshold)
        self.schedule, self.task = schedule, task
        self.density_options = dict(prune_every=prune_every, last_epoch=last_epoch, min_fraction=min_fraction,
                                    count_every=count_every)
        self.prune_options = prune_options
        self.events: list[TrainingEvent] = []
        self.result: Any = None  # Masks or ChannelPruneResult of the last prune (early and init)
        self._early: EarlyPruner | None = None
        self._density: ActivationDensityPruner | None = None
        self._batches: list | None = None

    # ----- called by the callbacks ---------------------------------------------------------------
    def start(self, model: nn.Module, optimizers: Sequence[Any], train_batches: Callable[[], Iterable[Any]],
              batch_fn: BatchFn | None = None) -> TrainingEvent | None:
        """Before the first training step: prune now (``when="init"``) or get ready to prune later.

        ``train_batches`` gives the training dataloader (called only when no ``data`` was given).
        """
        self._batches = self._scoring_batches(train_batches, batch_fn)
        optimizers = [plain_optimizer(o) for o in optimizers]
        if self.during:
            if len(optimizers) > 1:
                raise PruningError("activation-density resizing slices one optimizer's state; this training has "
                                   f"{len(optimizers)} optimizers: prune with an EarlyCroP-style method instead")
            example = first_example(self._batches[0][0])
            self._density = ActivationDensityPruner(model, example, optimizer=optimizers[0] if optimizers else None,
                                                    **self.density_options)
            return None
        if self.when == "early":
            options = dict(self.prune_options)
            if self.schedule is not None:
                options["schedule"] = self.schedule
            self._early = EarlyPruner(model, self.method, self.sparsity, self._batches, structured=self.structured,
                                      task=self.task, **self.early_options, **options)
            return None
        return self._prune_at_init(model, optimizers)

    def epoch_end(self, epoch: int, model: nn.Module, optimizers: Sequence[Any]) -> TrainingEvent | None:
        """After epoch ``epoch`` (1-based) has trained: prune or resize when due; the event, if any."""
        optimizers = [plain_optimizer(o) for o in optimizers]
        if self._density is not None:
            event = self._density.epoch_end(epoch, optimizer=optimizers[0] if optimizers else None)
            return self._record("activation_density", epoch, event) if event is not None else None
        if self._early is None or self._early.fired:
            return None
        before = dict(model.named_parameters())
        fired = self._early.step(epoch)
        if fired is None:
            return None
        self.result = self._early.result
        self._follow(model, before, optimizers)
        return self._record("early", epoch, fired)

    @property
    def active(self) -> bool:
        """Whether a later epoch may still prune (nothing more to do once an early prune fired or resizing stopped)."""
        if self._density is not None:
            return not self._density.stopped
        return self._early is not None and not self._early.fired

    # ----- internals -----------------------------------------------------------------------------
    def _scoring_batches(self, train_batches: Callable[[], Iterable[Any]], batch_fn: BatchFn | None) -> list:
        """``data`` as given (one batch, a list of batches, or the first ``score_batches`` of a loader), else the
        first ``score_batches`` of the training dataloader; each through ``batch_fn`` and checked."""
        source = self.data if self.data is not None else train_batches()
        if source is None:
            raise PruningError("no training dataloader to score with: pass data=(inputs, targets) batches")
        if isinstance(source, (list, tuple)) and len(source) == 2 and isinstance(source[1], torch.Tensor):
            batches = [source]  # one (inputs, targets) batch
        elif isinstance(source, (list, tuple)):
            batches = list(source)
        else:
            batches = list(itertools.islice(iter(source), self.score_batches))
        if batch_fn is not None:
            batches = [batch_fn(b) for b in batches]
        if not batches:
            raise PruningError("the scoring data is empty: the training dataloader gave no batch")
        checked = []
        for i, batch in enumerate(batches):
            if not (isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor)):
                raise PruningError(
                    f"scoring batch {i} is not an (inputs, targets) pair (got {type(batch).__name__}): pass "
                    "batch_fn=lambda batch: (inputs, targets) to the callback, or data=[(inputs, targets), ...]"
                )
            checked.append((batch[0], batch[1]))
        return checked

    def _prune_at_init(self, model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> TrainingEvent:
        example = first_example(self._batches[0][0])
        before_report = report(model, example_inputs=example)
        before = dict(model.named_parameters())
        options = dict(self.prune_options)
        if self.schedule is not None:
            options["schedule"] = self.schedule
        started = time.perf_counter()
        call = prune_channels if self.structured else prune
        self.result = call(model, self.method, self.sparsity, self._batches, task=self.task, **options)
        seconds = time.perf_counter() - started
        self._follow(model, before, optimizers)
        after = report(model, example_inputs=example)
        event = PruneEvent(0, self.sparsity, self.structured, before_report.params, after.params,
                           before_report.nonzero, after.nonzero, before_report.effective_flops, after.effective_flops,
                           seconds, "at initialisation")
        return self._record("init", 0, event)

    def _follow(self, model: nn.Module, before: dict[str, nn.Parameter],
                optimizers: list[torch.optim.Optimizer]) -> None:
        """Make every optimizer train the pruned model (see the module docstring)."""
        if self.structured:
            after = dict(model.named_parameters())
            kept = self.result.kept_indices
            for optimizer in optimizers:
                _slice_optimizer(optimizer, before, after, kept)
            return
        bound = mask_binding(model)
        if bound is None:
            return
        masked = {id(p) for n, p in model.named_parameters() if n in bound.masks}
        for optimizer in optimizers:
            if any(id(p) in masked for group in optimizer.param_groups for p in group["params"]):
                bound.attach(optimizer)

    def _record(self, kind: str, epoch: int, details: Any) -> TrainingEvent:
        event = TrainingEvent(kind, epoch, details)
        self.events.append(event)
        return event


def optimizer_holds(optimizer: Any, model: nn.Module) -> bool:
    """Whether ``optimizer`` holds exactly the model's trainable parameters (each one, once, and no other)."""
    held = [id(p) for group in plain_optimizer(optimizer).param_groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    return len(held) == len(set(held)) and set(held) == set(trainable)


def missing_extra(package: str, extra: str) -> ImportError:
    """The error an integration raises when its framework is not installed."""
    return ImportError(f"this integration needs {package}, which is not installed: pip install 'earlyprune[{extra}]'")
