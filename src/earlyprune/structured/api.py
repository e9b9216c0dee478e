"""Structured pruning in one call, :func:`prune_channels`: trace, score channels, select, remove them
physically; in rounds on a schedule when asked."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .. import presets
from ..batches import first_example, to_device
from ..criteria import Criterion, resolve
from ..criteria.compute import require_structured
from ..distributed import unwrap
from ..errors import PruningError
from ..model_state import model_device, model_dtype
from ..progress import rounds
from ..schedules import schedule_targets
from ..scoring_data import scoring_batches
from ..selection import ZERO_SCORE_POLICIES, check_not_all_zero, check_sparsity
from ..tasks import get as get_task
from ..tasks import scoring_loss
from ..torch_prune import refuse_torch_pruned
from .groups import build_groups
from .importance import channel_importance
from .budget import CostModel, check_budget, measured_budget, select_to_budget
from .selection import select_channels
from .surgery import KeptIndices, ShrinkResult, shrink

#: Settings of unstructured ``earlyprune.prune`` that structured pruning has no use for, and why.
_UNSTRUCTURED_ONLY = {
    "scope": "channels are always ranked together across layers (EarlyCroP's node sparsity)",
    "rule": "the kept count is always exact",
    "iterations": "rounds follow `schedule` (e.g. 'crop-it' or a list of fractions)",
    "on_collapse": "every channel group keeps at least one channel (see min_fraction)",
    "min_per_layer": "use min_fraction for a per-group minimum",
    "samples_per_class": "no structured criterion scores on a class-balanced set",
    "structured": "prune_channels is the structured call",
}


@dataclass
class ChannelPruneResult:
    """What :func:`prune_channels` did: the (smaller) model and the surgery, composed over the rounds.

    ``kept_indices`` maps each parameter whose shape changed to ``{dim: kept indices}`` relative to the
    parameter before pruning (slice any per-parameter tensor with :meth:`slice`); ``kept_channels`` the
    kept channels of each group of the first trace; parameter counts and the output width of every
    Conv/Linear/recurrent layer before and after; ``info`` how it was made (method, targets, seed, seconds,
    and ``left_whole``: the layers whose channels could not be removed, with the reason).
    """

    model: nn.Module
    surgery: ShrinkResult
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_indices(self) -> KeptIndices:
        return self.surgery.kept_indices

    @property
    def kept_channels(self) -> dict[int, torch.Tensor]:
        return self.surgery.kept_channels

    @property
    def params_before(self) -> int:
        return self.surgery.params_before

    @property
    def params_after(self) -> int:
        return self.surgery.params_after

    @property
    def widths_before(self) -> dict[str, int]:
        return self.surgery.widths_before

    @property
    def widths_after(self) -> dict[str, int]:
        return self.surgery.widths_after

    def slice(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Slice per-parameter tensors (scores, EMA weights...) keyed by parameter name like the model."""
        return self.surgery.slice(tensors)


def prune_channels(
    model: nn.Module,
    method: str | Criterion,
    sparsity: float | None = None,
    data: Any = None,
    *,
    budget: dict[str, Any] | None = None,
    schedule: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable | None = None,
    task: Any = "classification",
    seed: int = 0,
    num_batches: int = 1,
    exclude: Iterable[Any] = (),
    min_fraction: float = 0.0,
    channel_multiple: int = 1,
    example_inputs: Any = None,
    train: bool | None = None,
    on_zero_scores: str = "raise",
    gate_at: str = "norm",
    preset: str = presets.DEFAULT_PRESET,
    **options: Any,
) -> ChannelPruneResult:
    """Remove a fraction ``sparsity`` of all prunable channels of ``model``, physically and in place.

    Args:
        model: any ``nn.Module`` torch-pruning can trace; its final classifier keeps its outputs.
        method: a criterion with a structured form (``random``, ``magnitude``, ``snip``, ``crop``, the
            ``-it`` variants) or a :class:`~earlyprune.criteria.Criterion` with ``channel_importance``.
        sparsity: fraction of prunable channels/units removed, in [0, 1) (EarlyCroP's node sparsity).
        budget: instead of ``sparsity``, the cost the pruned model may have, one key: ``{"flops": 0.25}``
            (fraction of the dense FLOPs), ``{"params": 100_000}`` (a count, or a fraction <= 1),
            ``{"memory_mb": 200, "batch_size": 128}`` (a training-memory estimate) or ``{"channels": 0.5}``
            (that fraction of channels, for the least FLOPs); channels are chosen by importance per unit of
            cost (:mod:`earlyprune.structured.budget`), one shot; ``info["budget"]`` says what was reached.
        data: scoring data (batches used as given, or the first ``num_batches`` of a loader); it also
            gives the example input the model is traced with (else ``example_inputs`` or the model's
            ``input_shape`` attribute).
        schedule: prune in rounds, re-tracing and rescoring the shrunk model each round: ``"crop-it"``
            (EarlyCroP's k_i = s − (s − 0.5)·0.5^i, then s) or an increasing list of fractions ending at
            ``sparsity``, each counted against the channels before the first round. Default: the
            criterion's (``"crop-it"`` for ``snip-it``/``crop-it``), else one shot.
        optimizer: the training optimizer; its parameter references and state are sliced in place.
        exclude: module names or types left whole (with every group tied to them).
        min_fraction: each group keeps at least this fraction of its channels (and at least one).
        channel_multiple: round every kept width up to a multiple of it (faster kernels).
        train: score in training (True) or eval (False) mode; default the criterion's.
        gate_at: where the gate-gradient criteria (snip, crop) put a channel's gate: ``"norm"`` (default:
            after the BatchNorm that follows the producer, where a gate of 0 is the surgery) or
            ``"output"`` (on the producer's output, before its BatchNorm, as the EarlyCroP code does).
        preset: ``"paper"`` (default) or ``"official"``: the official code's structured scoring (SNAP and
            CroPStructured: eval mode, 5 batches, gates on the conv output; :mod:`earlyprune.presets`).
        on_zero_scores: every channel scoring exactly 0 (the loss does not reach them, e.g. through a
            zero-initialised classifier) is an error (``"raise"``); ``"warn"`` selects by position.
        loss_fn, task: the scoring loss: the task's (a name from :func:`earlyprune.tasks.names` or a
            :class:`~earlyprune.tasks.Task`, default classification) unless ``loss_fn`` overrides it.
        **options: the criterion's own options.

    Returns a :class:`ChannelPruneResult`; nothing of it is left on the model, which is plain and natively
    narrow afterwards.
    """
    _refuse_unstructured_settings(options)
    if on_zero_scores not in ZERO_SCORE_POLICIES:
        raise PruningError(f"on_zero_scores must be one of {ZERO_SCORE_POLICIES}, got {on_zero_scores!r}")
    if (sparsity is None) == (budget is None):
        raise PruningError("prune_channels takes a sparsity (the fraction of channels removed) or a budget "
                           "(e.g. budget={'flops': 0.25}), exactly one of them")
    if budget is not None:
        budget_kind, budget_value, budget_batch = check_budget(budget)
        if schedule is not None:
            raise PruningError("a budget prunes in one shot; pass schedule=None with budget")
        sparsity = 0.0  # the rounds below run once; the budget decides the channels
    sparsity = check_sparsity(sparsity)
    model = unwrap(model)
    refuse_torch_pruned(model)  # torch's weight_orig/weight_mask form: convert with Masks.from_torch_prune
    criterion = resolve(method)
    require_structured(criterion)  # before tracing
    criterion.check_options(options)
    if gate_at not in GATE_POSITIONS:
        raise PruningError(f"gate_at must be one of {GATE_POSITIONS}, got {gate_at!r}")
    task = get_task(task)
    chosen = presets.resolve(criterion, preset, prune_channels, {"train": train, "num_batches": num_batches,
                                                                 "loss_fn": loss_fn, "gate_at": gate_at},
                             options, structured=True, class_targets=task.class_targets)
    train, num_batches, gate_at = (chosen.settings[k] for k in ("train", "num_batches", "gate_at"))
    loss_fn, options = chosen.settings["loss_fn"], chosen.options
    schedule = presets.schedule(criterion, preset, criterion.schedule if schedule is None else schedule, sparsity)
    targets = schedule_targets(sparsity, schedule) if budget is None else [0.0]
    loss_fn = scoring_loss(task, loss_fn)
    batches = scoring_batches(model, criterion, data, num_batches, task=task)
    example_inputs = _example_inputs(model, batches, example_inputs)
    ignored = _ignored_modules(model, exclude)
    started = time.perf_counter()
    combined: ShrinkResult | None = None
    original_total = None
    left_whole: dict[str, str] = {}
    for round_index, target in enumerate(rounds(targets, f"{criterion.name} structured rounds")):  # progress once slow
        plan = build_groups(model, example_inputs, ignored_layers=ignored)
        left_whole.update(plan.left_whole)
        current_total = sum(g.size for g in plan.groups)
        if original_total is None:
            original_total = current_total
        kept_target = round((1.0 - target) * original_total)
        if round_index and kept_target >= current_total and budget is None:
            continue  # this round asks for nothing the earlier ones have not removed already
        relative = 1.0 - kept_target / current_total if current_total else 0.0
        importance = channel_importance(model, criterion, batches, _gated(plan.groups, gate_at), loss_fn=loss_fn,
                                        seed=seed + round_index, train=train, **options)
        check_not_all_zero({str(g): s.double() for g, s in importance.items()}, warn=on_zero_scores == "warn")
        if budget is None:
            keep = select_channels(importance, plan.groups, min(max(relative, 0.0), 1.0 - 1e-12),
                                   min_fraction=min_fraction, multiple=channel_multiple)
        else:
            costs = CostModel(model, plan.groups, example_inputs)
            keep, budget_info = select_to_budget(importance, plan.groups, costs, budget_kind, budget_value,
                                                 budget_batch)
        result = shrink(model, plan, keep, optimizer=optimizer)
        combined = result if combined is None else combined.then(result)
    assert combined is not None  # the first round always runs
    if budget is not None:
        budget_info.update(measured_budget(combined, costs, model, example_inputs, budget_kind, budget_batch))
    info = {
        "method": criterion.name,
        "criterion": criterion.base or criterion.name,
        "sparsity_target": sparsity,
        "schedule": [float(t) for t in targets],
        "seed": seed,
        "channels_before": original_total,
        # channels that could not be removed, by root layer, and why (attention width, grouped convs, ties)
        "left_whole": left_whole,
        "scoring_seconds": time.perf_counter() - started,
        "options": dict(options),
        "train": train,
        "gate_at": gate_at,
        **({"budget": budget_info} if budget is not None else {}),
        **chosen.info(preset),
    }
    return ChannelPruneResult(model, combined, info)


#: Where a channel's gate may sit for the gate-gradient criteria (see ``gate_at`` of :func:`prune_channels`).
GATE_POSITIONS = ("norm", "output")


def _gated(groups: list, gate_at: str) -> list:
    """The groups with their gates where ``gate_at`` says: as traced (after the BatchNorm) for ``"norm"``,
    on each producer's own output for ``"output"``."""
    if gate_at == "norm":
        return groups
    return [dataclasses.replace(g, gate_points=list(g.producers)) for g in groups]


def _refuse_unstructured_settings(options: dict[str, Any]) -> None:
    for key, why in _UNSTRUCTURED_ONLY.items():
        if key in options:
            raise PruningError(f"{key} does not apply to structured pruning (prune_channels): {why}")


def _example_inputs(model: nn.Module, batches: Any, example_inputs: Any) -> Any:
    if example_inputs is None:
        if batches is not None:
            example_inputs = first_example(batches[0][0])
        elif getattr(model, "input_shape", None) is not None:
            example_inputs = torch.ones((1, *model.input_shape))
        else:
            raise PruningError("structured pruning needs example inputs to trace the model: pass data or example_inputs")
    return to_device(example_inputs, model_device(model), model_dtype(model))


def _ignored_modules(model: nn.Module, exclude: Iterable[Any]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    ignored: list[nn.Module] = []
    for e in exclude:
        if isinstance(e, str):
            if e not in modules:
                raise PruningError(f"exclude names {e!r}, which is not a module of the model")
            ignored.append(modules[e])
        elif isinstance(e, type):
            ignored.extend(m for m in model.modules() if isinstance(m, e))
        else:
            raise PruningError(f"exclude takes module names or types, got {e!r}")
    return ignored
