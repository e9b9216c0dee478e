"""The public entry points of unstructured pruning: :func:`score` (one round of importance) and
:func:`prune` (score, select, apply; one-shot or iterative), and :func:`methods` (what is available).

Structured pruning, which removes channels physically, is :func:`earlyprune.prune_channels`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import presets
from .ablations import check_ablation, inverted, reinitialise_kept, shuffled
from .criteria import Criterion, compute_importance, registered, resolve
from .criteria.synflow_rounds import runs_in_place, synflow_rounds
from .connectivity import network_cut
from .distributed import unwrap
from .errors import LayerCollapseError, PruningError
from .loss import LossFn
from .masking import applied_masks
from .masks import Masks
from .progress import rounds
from .prunable import NO_PRUNABLE, prunable_parameters
from .schedules import schedule_targets
from .scoring_data import scoring_batches
from .selection import check_sparsity, collapse_message, reshape_like, select
from .tasks import Task, scoring_loss
from .tasks import get as get_task


def methods() -> dict[str, str]:
    """Every method name ``prune`` accepts, with the paper it comes from and its formula."""
    listed = {name: f"{c.paper}: {c.summary}" for name, c in registered().items()}
    listed["activation_density"] = (
        "Foldy-Porto, Venkatesha, Panda 2020: structured, during training (see ActivationDensityPruner)"
    )
    return listed


def method_options(method: str | Criterion) -> dict[str, Any]:
    """The criterion options ``method`` accepts, with their defaults; raises :class:`PruningError` for an
    unknown method."""
    return dict(resolve(method).options)


def score(
    model: nn.Module,
    method: str | Criterion,
    batches: Any = None,
    *,
    exclude: Iterable[str | type[nn.Module]] = (),
    include: Iterable[str | type[nn.Module]] = (),
    masks: Mapping[str, torch.Tensor] | None = None,
    loss_fn: LossFn | None = None,
    task: str | Task = "classification",
    seed: int = 0,
    train: bool | None = None,
    preset: str = presets.DEFAULT_PRESET,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """One round of ``method``'s importance for every prunable parameter: ``{name: tensor}``, higher = keep.

    ``method`` is a name from :func:`methods` or a :class:`~earlyprune.criteria.Criterion`. ``batches``
    (one ``(inputs, targets)`` pair or an iterable of them) are used as they are. Scores are taken under
    ``masks``, or under the masks currently applied to ``model``. The model's weights, buffers, modes,
    gradients and the global RNG are left as they were. The loss scored is the ``task``'s (a name from
    :func:`earlyprune.tasks.names` or a :class:`~earlyprune.tasks.Task`; ``loss_fn`` overrides it).
    ``train`` scores in training (True) or eval (False) mode instead of the criterion's own mode.
    ``preset="official"`` scores as the method's official code does (:mod:`earlyprune.presets`).
    """
    model = unwrap(model)
    _reject_empty(model)
    criterion = resolve(method)
    criterion.check_options(options)
    chosen = presets.resolve(criterion, preset, score, {"train": train, "loss_fn": loss_fn}, options,
                             class_targets=get_task(task).class_targets)
    train, loss_fn, options = chosen.settings["train"], chosen.settings["loss_fn"], chosen.options
    params = prunable_parameters(model, exclude=exclude, include=include)
    if not params:
        raise PruningError(NO_PRUNABLE)
    masks = _current_masks(model, masks, params)
    loss = scoring_loss(task, loss_fn)
    return compute_importance(model, criterion, params, batches, masks=masks, loss_fn=loss, seed=seed,
                              train=train, **options)


def prune(
    model: nn.Module,
    method: str | Criterion,
    sparsity: float,
    data: Any = None,
    *,
    scope: str = "global",
    iterations: int | None = None,
    schedule: str | Sequence[float] | None = None,
    rule: str = "topk",
    exclude: Iterable[str | type[nn.Module]] = (),
    include: Iterable[str | type[nn.Module]] = (),
    on_collapse: str = "guard",
    min_per_layer: int = 1,
    on_zero_scores: str = "raise",
    loss_fn: LossFn | None = None,
    task: str | Task = "classification",
    seed: int = 0,
    num_batches: int = 1,
    samples_per_class: int = 10,
    optimizer: torch.optim.Optimizer | None = None,
    train: bool | None = None,
    preset: str = presets.DEFAULT_PRESET,
    ablation: str | None = None,
    init_scheme: str | None = None,
    **options: Any,
) -> Masks:
    """Prune ``model``'s weights in place with ``method`` to ``sparsity`` and return the applied :class:`Masks`.

    Args:
        model: any ``nn.Module``; prunable by default are the weights of its Linear, Conv1d/2d/3d,
            LSTM/GRU/RNN (``weight_ih_l*``, ``weight_hh_l*``), MultiheadAttention (input and output
            projections) and GPT-2 ``Conv1D`` layers; biases, norms and embeddings stay dense.
        method: a name from :func:`methods` (``"snip"``, ``"grasp"``, ``"synflow"``, ``"crop-it"``, ...)
            or a :class:`~earlyprune.criteria.Criterion` of the user's.
        sparsity: fraction of prunable weights removed, in [0, 1). The kept count is exactly
            ``round((1 - sparsity) * N)`` with ``rule="topk"``.
        data: scoring data: one ``(inputs, targets)`` batch or a list of them (used as given), or a
            loader (the first ``num_batches`` batches; GraSP draws ``samples_per_class`` per class).
        scope: ``"global"`` ranks all weights together, ``"layer"`` prunes each layer to ``sparsity``.
        iterations: rounds of the exponential schedule d^(i/n) (default: the criterion's; SynFlow 100).
        schedule: ``"exponential"``, ``"crop-it"`` (EarlyCroP's) or an explicit increasing list of
            sparsities ending at ``sparsity``. ``"snip-it"``/``"crop-it"`` methods use ``"crop-it"``.
        rule: ``"topk"`` (exact count), ``"official"`` (SynFlow repository's ``<=`` threshold rule), or the
            counts of other official codes, ``"grasp"``, ``"earlycrop"``, ``"prospr"`` (see
            :mod:`earlyprune.selection`).
        exclude: module names, parameter names or module types left dense.
        include: more to prune: module types (``torch.nn.Embedding``, a layer class of your own: its
            ``weight``), module names or exact parameter names (``"pos_embed"``); ``exclude`` wins. See
            :func:`earlyprune.prunable.prunable_parameters`.
        on_collapse: what to do with a layer pruned to nothing (see :mod:`earlyprune.selection`):
            ``"guard"`` (the default: an error when the collapse cuts the network, i.e. the first or last
            layer or more than half of the layers are emptied; any other empty layer is named in
            ``info["collapsed"]`` with a warning), ``"warn"`` (keep the masks whatever was emptied, name
            the layers, warn), ``"raise"`` (an error for any), ``"keep_min"``, or ``"allow"`` (keep and
            name them, without a warning: to reproduce a baseline that collapses).
        min_per_layer: weights each layer keeps with ``on_collapse="keep_min"``.
        on_zero_scores: importance 0 for every unpruned weight (the loss does not depend on them) is an
            error (``"raise"``), or with ``"warn"`` a warning and a selection by position
            (:class:`~earlyprune.EarlyPruner` warns: mid-training, a network gone dead must not end the run).
        loss_fn: ``loss_fn(outputs, targets)``, the scoring loss; overrides the task's.
        task: ``"classification"`` (cross-entropy, the default), ``"regression"`` (MSE),
            ``"language_modelling"`` (next-token cross-entropy) or a :class:`~earlyprune.tasks.Task`: the
            loss the criteria score with, checked to apply to the model's outputs. GraSP's class-balanced
            scoring set is drawn only for classification; for other tasks it takes the first batches.
        optimizer: when pruning mid-training, the optimizer whose state must respect the masks.
        train: score in training (True) or eval (False) mode; default the criterion's own (SynFlow eval,
            the gradient criteria training mode).
        preset: ``"paper"`` (default: the paper's method) or ``"official"``: exactly what the method's
            official code does (GraSP's Xavier re-draw and ``>=`` rule, CroP's eval mode, 5 batches and
            strict ``>``, ...; :mod:`earlyprune.presets`, ``docs/methods.md``). Recorded in ``info``.
        ablation: one of Frankle et al.'s sanity checks (:mod:`earlyprune.ablations`): ``"shuffle"`` each
            layer's mask, ``"reinit"`` the kept weights, ``"invert"`` the scores; None for none.
        init_scheme: the initialisation ``ablation="reinit"`` re-draws from (a scheme of
            :mod:`earlyprune.models.init`, e.g. ``"kaiming"``); None: PyTorch's default initialisation.
        **options: the criterion's own options (e.g. ``temperature``, ``steps``, ``double``).

    Channels removed physically: :func:`earlyprune.prune_channels`.
    """
    if "structured" in options:
        raise PruningError("prune() prunes weights; to remove whole channels use earlyprune.prune_channels(...)"
                           " (EarlyPruner keeps structured=True)")
    sparsity = check_sparsity(sparsity)
    model = unwrap(model)
    _reject_empty(model)
    criterion = resolve(method)
    criterion.check_options(options)
    ablation = check_ablation(ablation)
    if init_scheme is not None and ablation != "reinit":
        raise PruningError("init_scheme applies to ablation='reinit' only (the initialisation it re-draws from)")
    task = get_task(task)
    chosen = presets.resolve(criterion, preset, prune, {"rule": rule, "train": train, "num_batches": num_batches,
                                                        "loss_fn": loss_fn}, options,
                             class_targets=task.class_targets)
    rule, train, num_batches = chosen.settings["rule"], chosen.settings["train"], chosen.settings["num_batches"]
    loss_fn, options = chosen.settings["loss_fn"], chosen.options
    if criterion.schedule is not None:
        if iterations is not None:
            raise PruningError(
                f"iterations does not apply to {criterion.name!r}, whose rounds follow EarlyCroP's schedule; pass "
                "schedule=[...] for other rounds, or use the plain criterion with iterations"
            )
        schedule = criterion.schedule if schedule is None else schedule
    params = prunable_parameters(model, exclude=exclude, include=include)
    if not params:
        raise PruningError(NO_PRUNABLE)
    schedule = presets.schedule(criterion, preset, schedule, sparsity)
    targets = schedule_targets(sparsity, schedule, criterion.iterations if iterations is None else iterations)
    loss = scoring_loss(task, loss_fn)
    batches = scoring_batches(model, criterion, data, num_batches, samples_per_class, task=task)

    existing = applied_masks(model)
    current = {n: m for n, m in existing.items() if n in params} if existing is not None else None
    _refuse_lower_sparsity(current, params, sparsity)
    if ablation == "shuffle" and current:
        raise PruningError("ablation='shuffle' permutes the masks of a network pruned from dense (Frankle et al. "
                           "prune at initialisation); this model already has masks: prune a fresh model")
    # the weights before pruning: the shuffle ablation re-masks them; the guard puts them back if it refuses,
    # and so does an error in a later round (the earlier rounds have masked the weights in place)
    keep_original = ablation == "shuffle" or on_collapse == "guard" or len(targets) > 1
    original = {n: p.detach().clone() for n, p in params.items()} if keep_original else {}
    # the guard judges the final masks on the pruned network (connectivity.network_cut), not each round's
    # emptied layers by their position
    round_policy = "warn" if on_collapse == "guard" else on_collapse
    started = time.perf_counter()
    collapsed: list[str] = []
    try:
        in_place = len(targets) > 1 and runs_in_place(criterion, train, ablation)
        if in_place:  # SynFlow's rounds: the network linearised once, not once per round (same masks)
            current, collapsed = synflow_rounds(
                model, params, targets, current, batches=batches, scope=scope, rule=rule, on_collapse=round_policy,
                min_per_layer=min_per_layer, on_zero_scores=on_zero_scores, seed=seed,
                description=f"{criterion.name} rounds", **options)
            with torch.no_grad():
                for name, param in params.items():
                    param.mul_(current[name])
        for round_index, target in enumerate(rounds([] if in_place else targets, f"{criterion.name} rounds")):  # progress once slow
            importance = compute_importance(
                model, criterion, params, batches, masks=current, loss_fn=loss, seed=seed + round_index, train=train,
                **options
            )
            if ablation == "invert":
                importance = inverted(importance)
            flat, collapsed = select(importance, target, scope, current, rule, round_policy, min_per_layer,
                                     on_zero_scores=on_zero_scores)
            current = reshape_like(flat, params)
            with torch.no_grad():
                for name, param in params.items():
                    param.mul_(current[name])
        if ablation == "shuffle":
            current = shuffled(current, seed)
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(original[name] * current[name])
        if ablation == "reinit":
            init_scheme = reinitialise_kept(model, params, current, init_scheme, seed)
        elapsed = time.perf_counter() - started

        if collapsed and on_collapse == "guard":
            cut = network_cut(model, list(params), collapsed, batches[0][0] if batches else None, dense_params=original)
            if cut:
                raise LayerCollapseError(f"{cut}. " + collapse_message(collapsed, guard=True))
    except BaseException:
        if original:  # nothing lost: the model gets its unpruned weights back
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(original[name])
        raise
    if collapsed and on_collapse != "allow":
        warnings.warn(collapse_message(collapsed), RuntimeWarning, stacklevel=2)
    total = sum(m.numel() for m in current.values())
    achieved = 1.0 - sum(int(m.sum()) for m in current.values()) / total if total else 0.0
    # the official codes' counts are off by up to two weights by design (rules other than topk)
    if abs(achieved - sparsity) > max(SPARSITY_TOLERANCE, (1.0 if rule == "topk" else 2.0 + 1e-9) / max(total, 1)):
        warnings.warn(f"pruning reached sparsity {achieved:.6g} over the {total} prunable weights, not the "
                      f"{sparsity} asked for" + (" (the official rule prunes every weight tied at the threshold)"
                                                  if rule == "official" else ""),
                      RuntimeWarning, stacklevel=2)
    info = {
        "method": criterion.name,
        "criterion": criterion.base or criterion.name,
        "sparsity_target": sparsity,
        "sparsity_achieved": achieved,
        "task": task.name,
        "loss": "task" if loss_fn is None else getattr(loss_fn, "__name__", type(loss_fn).__name__),
        "scope": scope,
        "rule": rule,
        "schedule": [float(t) for t in targets],
        "seed": seed,
        "collapsed": collapsed,
        "scoring_seconds": elapsed,
        "options": dict(options),
        "train": train,
        **chosen.info(preset),
        "ablation": ablation,
        **({"init_scheme": init_scheme} if ablation == "reinit" else {}),
    }
    masks = Masks(current, info=info)
    masks.apply(model, optimizer=optimizer)
    return masks


#: How far the achieved sparsity may be from the target (beyond one weight) before prune warns.
SPARSITY_TOLERANCE = 1e-3


def _reject_empty(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise PruningError("model has no parameters: " + NO_PRUNABLE.split(": ", 1)[1])


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


def _current_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor] | None, params: Mapping[str, nn.Parameter]
) -> dict[str, torch.Tensor] | None:
    source = masks if masks is not None else applied_masks(model)
    if source is None:
        return None
    return {n: source[n].to(params[n].device) for n in params if n in source}
