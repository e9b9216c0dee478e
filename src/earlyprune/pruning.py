"""The public entry points: :func:`score` (one round of importance) and :func:`prune` (score, select,
apply; one-shot or iterative), and :func:`methods` (what is available, with its paper)."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .criteria import CRITERIA, LossFn, as_batches, compute_importance, get_criterion
from .criteria._context import first_example, isolated, model_device, model_dtype, to_device
from .distributed import unwrap
from .errors import PruningError
from .masks import Masks, applied_masks, prunable_parameters
from .scoring_data import class_balanced, first_batches, is_batch_list
from .selection import (
    check_sparsity,
    collapse_message,
    reshape_like,
    schedule_targets,
    select,
)

#: Iterative variants: name -> (criterion, schedule).
ITERATIVE_VARIANTS: dict[str, tuple[str, str]] = {
    "snip-it": ("snip", "crop-it"),
    "crop-it": ("crop", "crop-it"),
}

_VARIANT_PAPERS = {
    "snip-it": "Verdenius, Stol, Forré, SNIP-it, 2020; schedule of Rachwan et al., ICML 2022",
    "crop-it": "Rachwan et al., EarlyCroP (CroP-it), ICML 2022",
}


def methods() -> dict[str, str]:
    """Every method name ``prune`` accepts, with the paper it comes from."""
    listed = {name: f"{c.paper}: {c.summary}" for name, c in CRITERIA.items()}
    for name, (criterion, _) in ITERATIVE_VARIANTS.items():
        listed[name] = f"{_VARIANT_PAPERS[name]}: iterative {criterion}, rescored under the current mask"
    listed["activation_density"] = (
        "Foldy-Porto, Venkatesha, Panda 2020: structured, during training (see ActivationDensityPruner)"
    )
    return listed


def method_options(method: str) -> dict[str, Any]:
    """The criterion options ``method`` accepts, with their defaults (iterative variants: those of their
    criterion); raises :class:`PruningError` for an unknown method."""
    criterion_name, _ = _resolve_method(method, None)
    return dict(get_criterion(criterion_name).defaults)


def score(
    model: nn.Module,
    method: str,
    batches: Any = None,
    *,
    exclude: Iterable[str | type[nn.Module]] = (),
    masks: Mapping[str, torch.Tensor] | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """One round of ``method``'s importance for every prunable parameter: ``{name: tensor}``, higher = keep.

    ``batches`` (one ``(inputs, targets)`` pair or an iterable of them) are used as they are. Scores are
    taken under ``masks``, or under the masks currently applied to ``model``. The model's weights,
    buffers, modes, gradients and the global RNG are left as they were.
    """
    model = unwrap(model)
    _reject_empty(model)
    criterion = get_criterion(method)
    params = prunable_parameters(model, exclude=exclude)
    if not params:
        raise PruningError(_NO_PRUNABLE)
    masks = _current_masks(model, masks, params)
    if criterion.name == "synflow" and "input_shape" not in options and batches is None:
        options["input_shape"] = getattr(model, "input_shape", None)
    importance = compute_importance(
        model, criterion.name, params, batches, masks=masks, loss_fn=loss_fn, seed=seed, **options
    )
    return importance


def prune(
    model: nn.Module,
    method: str,
    sparsity: float,
    data: Any = None,
    *,
    scope: str = "global",
    iterations: int | None = None,
    schedule: str | Sequence[float] | None = None,
    rule: str = "topk",
    structured: bool = False,
    exclude: Iterable[str | type[nn.Module]] = (),
    on_collapse: str = "warn",
    min_per_layer: int = 1,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    num_batches: int = 1,
    samples_per_class: int = 10,
    optimizer: torch.optim.Optimizer | None = None,
    **options: Any,
) -> Any:
    """Prune ``model`` in place with ``method`` to ``sparsity`` and return the applied :class:`Masks`.

    Args:
        model: any ``nn.Module``; weights of its Linear/Conv layers are pruned (see ``exclude``).
        method: a name from :func:`methods` (``"snip"``, ``"grasp"``, ``"synflow"``, ``"crop-it"``, ...).
        sparsity: fraction of prunable weights removed, in [0, 1). The kept count is exactly
            ``round((1 - sparsity) * N)`` with ``rule="topk"``.
        data: scoring data: one ``(inputs, targets)`` batch or a list of them (used as given), or a
            loader (the first ``num_batches`` batches; GraSP draws ``samples_per_class`` per class).
        scope: ``"global"`` ranks all weights together, ``"layer"`` prunes each layer to ``sparsity``.
        iterations: rounds of the exponential schedule d^(i/n) (default 1; SynFlow 100).
        schedule: ``"exponential"``, ``"crop-it"`` (EarlyCroP's) or an explicit increasing list of
            sparsities ending at ``sparsity``. ``"snip-it"``/``"crop-it"`` methods use ``"crop-it"``.
        rule: ``"topk"`` (exact count) or ``"official"`` (SynFlow repository's ``<=`` threshold rule).
        structured: remove whole channels physically (see :mod:`earlyprune.structured`); returns the
            (smaller) model instead of masks. ``schedule`` applies (rounds of re-tracing and rescoring;
            ``"crop-it"`` for EarlyCroP's), ``scope``/``iterations``/``rule`` do not.
        on_collapse: what to do with a layer pruned to nothing: ``"warn"``, ``"raise"``, ``"keep_min"``.
        min_per_layer: weights each layer keeps with ``on_collapse="keep_min"``.
        optimizer: when pruning mid-training, the optimizer whose state must respect the masks.
        **options: the criterion's own options (e.g. ``temperature``, ``steps``, ``double``).
    """
    sparsity = check_sparsity(sparsity)
    model = unwrap(model)
    _reject_empty(model)
    criterion_name, schedule = _resolve_method(method, schedule, iterations)
    criterion = get_criterion(criterion_name)
    if structured:
        from .structured.api import prune_structured

        return prune_structured(
            model, criterion.name, sparsity, data, optimizer=optimizer, loss_fn=loss_fn, seed=seed,
            num_batches=num_batches, exclude=exclude, schedule=schedule, **options,
        )

    params = prunable_parameters(model, exclude=exclude)
    if not params:
        raise PruningError(_NO_PRUNABLE)
    if iterations is None:
        iterations = criterion.default_iterations
    targets = schedule_targets(sparsity, schedule, iterations)
    batches = _scoring_batches(model, criterion, data, num_batches, samples_per_class)
    if criterion.name == "synflow" and batches is None and "input_shape" not in options:
        options["input_shape"] = getattr(model, "input_shape", None)

    existing = applied_masks(model)
    current = {n: m for n, m in existing.items() if n in params} if existing is not None else None
    _refuse_lower_sparsity(current, params, sparsity)
    started = time.perf_counter()
    collapsed: list[str] = []
    for round_index, target in enumerate(targets):
        importance = compute_importance(
            model, criterion.name, params, batches, masks=current, loss_fn=loss_fn,
            seed=seed + round_index, **options,
        )
        flat, collapsed = select(importance, target, scope, current, rule, on_collapse, min_per_layer)
        current = reshape_like(flat, params)
        with torch.no_grad():
            for name, param in params.items():
                param.mul_(current[name])
    elapsed = time.perf_counter() - started

    if collapsed:
        warnings.warn(collapse_message(collapsed), RuntimeWarning, stacklevel=2)
    info = {
        "method": method,
        "criterion": criterion.name,
        "sparsity_target": sparsity,
        "scope": scope,
        "rule": rule,
        "schedule": [float(t) for t in targets],
        "seed": seed,
        "collapsed": collapsed,
        "scoring_seconds": elapsed,
        "options": {k: v for k, v in options.items() if k != "input_shape"},
    }
    masks = Masks(current, info=info)
    masks.apply(model, optimizer=optimizer)
    return masks


_NO_PRUNABLE = (
    "model has no prunable parameters: earlyprune prunes the weights of Linear and Conv1d/2d/3d layers; "
    "check the model and that `exclude` does not remove every layer"
)


def _reject_empty(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise PruningError("model has no parameters: " + _NO_PRUNABLE.split(": ", 1)[1])


def _refuse_lower_sparsity(
    current: Mapping[str, torch.Tensor] | None, params: Mapping[str, nn.Parameter], sparsity: float
) -> None:
    """Masks only ever remove weights: asking for less sparsity than the model already has is an error."""
    if not current:
        return
    total = sum(p.numel() for p in params.values())
    pruned = sum(int((~current[n].bool()).sum()) for n in params if n in current)
    if total and total - pruned < round((1.0 - sparsity) * total):
        raise PruningError(
            f"sparsity {sparsity} is below the {pruned / total:.6g} the model's applied masks already reach; "
            "pruning never brings weights back: ask for a sparsity >= the current one, or prune a fresh model"
        )


def _resolve_method(
    method: str, schedule: str | Sequence[float] | None, iterations: int | None = None
) -> tuple[str, Any]:
    if not isinstance(method, str) or method.lower() not in methods():
        raise PruningError(f"unknown method {method!r}; known methods: {', '.join(methods())}")
    if method.lower() in ITERATIVE_VARIANTS:
        if iterations is not None:
            raise PruningError(
                f"iterations does not apply to {method!r}, whose rounds follow EarlyCroP's schedule; pass "
                "schedule=[...] for other rounds, or use the plain criterion with iterations"
            )
        criterion, variant_schedule = ITERATIVE_VARIANTS[method.lower()]
        return criterion, schedule if schedule is not None else variant_schedule
    if isinstance(method, str) and method.lower() == "activation_density":
        raise PruningError(
            "activation_density prunes during training, not in one call: use earlyprune.ActivationDensityPruner "
            "in the training loop (or `earlyprune run --method activation_density`)"
        )
    return method, schedule


def _scoring_batches(model: nn.Module, criterion: Any, data: Any, num_batches: int, samples_per_class: int):
    if data is None:
        if criterion.needs_data:
            raise PruningError(
                f"method {criterion.name!r} needs data: pass data=(inputs, targets), a list of batches or a loader"
            )
        return None
    if is_batch_list(data):
        return as_batches(data)
    if criterion.class_balanced:
        first, data = _peek(data)
        return _halves(class_balanced(data, samples_per_class, _num_classes(model, first)))
    return first_batches(data, num_batches)


def _halves(batches: list) -> list:
    """Split the class-balanced set into two halves, as GraSP's official code scores it."""
    inputs, targets = batches[0]
    half = targets.shape[0] // 2
    if half == 0:
        return batches
    return [(inputs[:half], targets[:half]), (inputs[half:], targets[half:])]


def _num_classes(model: nn.Module, first_batch: Any) -> int:
    """Number of classes = width of the model's output on one example of the data's first batch."""
    with isolated(model, train=False), torch.no_grad():
        out = model(to_device(first_example(first_batch[0]), model_device(model), model_dtype(model)))
    return int(out.shape[-1])


def _peek(loader: Any) -> tuple[Any, Any]:
    """The first batch of ``loader`` and an iterable of all its batches, that first one included, that
    walks ``loader`` only once (so one-pass iterators lose nothing)."""
    iterator = iter(loader)
    first = next(iterator, None)
    if first is None:
        raise PruningError("data is empty: the loader yielded no batches")
    return first, itertools.chain([first], iterator)


def _current_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor] | None, params: Mapping[str, nn.Parameter]
) -> dict[str, torch.Tensor] | None:
    source = masks if masks is not None else applied_masks(model)
    if source is None:
        return None
    return {n: source[n].to(params[n].device) for n in params if n in source}
