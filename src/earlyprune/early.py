"""EarlyPruner: prune early in training, in the user's own loop (EarlyCroP, Rachwan et al., ICML 2022).

Call :meth:`EarlyPruner.step` once per epoch (after the epoch's training), or every N training steps if
you prefer finer checks: the pruner counts calls, so ``at_epoch``/``cap_epoch`` then count calls too. It watches the normalised
weight distance (:mod:`earlyprune.triggers`), fires by EarlyCroP's rule, at a cap epoch, or at a fixed
epoch, then prunes (iteratively, rescoring under the current mask, on EarlyCroP's schedule by default)
with any criterion — ``crop`` by default — unstructured (masks) or structured (channels removed
physically, the optimizer's state sliced in place so training goes on).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from . import presets
from .batches import first_example, is_batch
from .criteria import Criterion, resolve
from .distributed import broadcast_decision, unwrap
from .errors import PruningError
from .metrics import report
from .prunable import prunable_parameters
from .pruning import prune
from .selection import check_sparsity
from .structured import prune_channels
from .structured.budget import check_budget
from .tasks import get as get_task
from .triggers import DEFAULT_RELATIVE_THRESHOLD, WeightDistance, WeightDistanceTrigger


@dataclass
class PruneEvent:
    """What a prune did: when, to what sparsity, and the size and cost before and after."""

    epoch: int
    sparsity: float
    structured: bool
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    flops_before: int | None
    flops_after: int | None
    seconds: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EarlyPruner:
    """Prune ``model`` once, early in training, when the weights have settled.

    Args:
        model: the model being trained (changed in place).
        method: any criterion, by name or as a :class:`~earlyprune.criteria.Criterion` (default ``"crop"``,
            EarlyCroP's).
        sparsity: weight sparsity (unstructured) or fraction of channels removed (structured); default 0.9,
            none with a ``budget``.
        data: scoring data from the *training* set: batches or a loader.
        structured: remove whole channels physically.
        budget: structured only, instead of ``sparsity``: the cost the pruned model may have, e.g.
            ``{"flops": 0.25}`` (:func:`earlyprune.prune_channels`' budgets); one shot, so the schedule is
            not used. The result's ``info["budget"]`` says what was reached.
        optimizer: the training optimizer; its state is masked (unstructured) or sliced (structured).
        at_epoch: prune at this epoch instead of by the trigger.
        cap_epoch: prune at this epoch at the latest (the trigger may fire earlier).
        relative_threshold: the trigger's threshold as a fraction of d_2 (see :mod:`earlyprune.triggers`).
        schedule: pruning schedule, unstructured and structured alike: default EarlyCroP's (``"crop-it"``:
            k_i = s − (s − 0.5)·0.5^i, then s, rescoring the masked or shrunk model each round);
            ``"exponential"`` for one shot (or ``iterations`` rounds of d^(i/n), unstructured only).
        task: the task whose loss the criterion scores with (``"classification"``, ``"regression"``,
            ``"language_modelling"`` or a :class:`~earlyprune.tasks.Task`; ``loss_fn=`` overrides it).
        preset: ``"paper"`` (default) or ``"official"``: the criterion scores as its official code does
            (:mod:`earlyprune.presets`; for crop: eval mode, 5 batches, strict ``>``, the schedule from 0.25
            for targets <= 0.5) and the trigger measures every parameter (biases, BatchNorm) instead of the
            prunable weights, as EarlyCroP's ``DefaultTrainer`` does.
        **prune_options: passed to :func:`earlyprune.prune` (scope, loss_fn, criterion options, ...) or, with
            ``structured=True``, to :func:`earlyprune.prune_channels`.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | Criterion = "crop",
        sparsity: float | None = None,
        data: Any = None,
        *,
        structured: bool = False,
        budget: dict[str, Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        at_epoch: int | None = None,
        cap_epoch: int | None = None,
        relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
        schedule: Any = "crop-it",
        task: Any = "classification",
        preset: str = presets.DEFAULT_PRESET,
        **prune_options: Any,
    ):
        if budget is not None:
            if not structured:
                raise PruningError("a budget applies to structured pruning only: pass structured=True")
            if sparsity is not None:
                raise PruningError("give a sparsity or a budget, not both: the budget decides how many channels go")
            if schedule != "crop-it":
                raise PruningError("a budget prunes in one shot: leave schedule at its default with a budget")
            check_budget(budget)  # a malformed budget is refused now, not when the pruner fires
        self.budget = None if budget is None else dict(budget)
        # with a budget, the fraction of channels removed once it has pruned
        self.sparsity = 0.0 if budget is not None else check_sparsity(0.9 if sparsity is None else sparsity)
        if at_epoch is not None and at_epoch < 1:
            raise PruningError(f"at_epoch must be >= 1, got {at_epoch}")
        model = unwrap(model)  # surgery happens on the module; rebuild a DDP wrapper after a structured prune
        self.model = model
        self.method = resolve(method)  # an unknown method is refused now, not when the pruner fires
        if self.method.needs_data and data is None:
            raise PruningError(f"method {self.method.name!r} needs scoring data: pass data=batches or a loader "
                               "of the training set")
        self.data = data
        self.structured = structured
        check_optimizer(model, optimizer)  # one that holds none of the model's weights would train nothing
        self.optimizer = optimizer
        self.at_epoch = at_epoch
        self.schedule = schedule
        self.task = get_task(task)  # an unknown task is refused now too
        self.prune_options = prune_options
        self.preset = presets.check_preset(preset)
        self.trigger = WeightDistanceTrigger(relative_threshold=relative_threshold, cap_epoch=cap_epoch)
        self.distance = WeightDistance(presets.trigger_parameters(model, preset))
        self.epoch = 0
        self.event: PruneEvent | None = None
        self.result: Any = None  # the Masks (unstructured) or the ChannelPruneResult (structured)

    @property
    def fired(self) -> bool:
        return self.event is not None

    def step(self, epoch: int | None = None, optimizer: torch.optim.Optimizer | None = None) -> PruneEvent | None:
        """Call after each epoch; prunes when due and returns the :class:`PruneEvent` of that epoch."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        if optimizer is not None:
            check_optimizer(self.model, optimizer)
            self.optimizer = optimizer
        if self.fired:
            return None
        if self.at_epoch is not None:
            due, reason = self.epoch >= self.at_epoch, f"fixed epoch {self.at_epoch}"
        else:
            if self.epoch == 1 or self.distance.reference is None:
                self.distance.set_reference()
                return None
            due = self.trigger.update(self.epoch, self.distance.distance())
            capped = self.trigger.cap_epoch is not None and self.epoch >= self.trigger.cap_epoch
            reason = f"cap epoch {self.trigger.cap_epoch}" if capped else "weight distance settled"
        # Under torch.distributed every rank must prune at the same epoch: rank 0 decides.
        return self._prune(reason) if broadcast_decision(due) else None

    def _prune(self, reason: str) -> PruneEvent:
        example = _example_input(self.data)
        before = report(self.model, example_inputs=example)
        start = time.perf_counter()
        call = prune_channels if self.structured else prune
        options = dict(self.prune_options)
        # Mid-training, weights or channels that all score 0 (a network gone dead) warn instead of ending the run.
        options.setdefault("on_zero_scores", "warn")
        if self.budget is not None:
            self.result = prune_channels(self.model, self.method, None, self.data, budget=self.budget,
                                         optimizer=self.optimizer, task=self.task, preset=self.preset, **options)
            kept = self.result.info["budget"]
            self.sparsity = 1.0 - kept["channels_kept"] / kept["channels_before"]
        else:
            self.result = call(self.model, self.method, self.sparsity, self.data, optimizer=self.optimizer,
                               schedule=self.schedule, task=self.task, preset=self.preset, **options)
        seconds = time.perf_counter() - start
        if self.optimizer is not None:  # the surgery swaps parameters: the optimizer must follow them
            check_optimizer(self.model, self.optimizer, after="the prune")
        after = report(self.model, example_inputs=example)
        self.event = PruneEvent(
            self.epoch, self.sparsity, self.structured, before.params, after.params, before.nonzero,
            after.nonzero, before.effective_flops, after.effective_flops, seconds, reason,
        )
        return self.event


def check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer | None, after: str | None = None) -> None:
    """Refuse an ``optimizer`` that does not hold the trainable prunable weights of ``model``: with none of
    them, ``optimizer.step()`` moves nothing and training stalls silently (an optimizer built for another
    model, or before a copy); with some missing, those layers would never train. ``after`` names what just
    changed the model (a structured prune) for the message."""
    if optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {name: p for name, p in prunable_parameters(model).items() if p.requires_grad}
    missing = [name for name, p in trainable.items() if id(p) not in held]
    if not missing:
        return
    when = f"after {after}, " if after else ""
    if len(missing) == len(trainable):
        raise PruningError(
            f"{when}the optimizer holds none of the model's weights ({', '.join(missing[:3])}, ...): "
            "optimizer.step() would move nothing. Build it from this model's parameters "
            "(torch.optim.SGD(model.parameters(), ...)), after any deepcopy or .to() that replaced them")
    raise PruningError(
        f"{when}the optimizer does not hold {len(missing)} of the model's trainable weights "
        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): they would never train. Build it from "
        "model.parameters(), or freeze those weights (requires_grad=False) if that is meant")


def _example_input(data: Any) -> Any:
    """One example from the scoring data, for FLOPs counting."""
    batch = data if is_batch(data) else next(iter(data), None)
    return None if batch is None else first_example(batch[0])
