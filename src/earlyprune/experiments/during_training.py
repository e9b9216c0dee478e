"""Pruning during training for ``earlyprune run``: early (EarlyCroP's trigger or a fixed epoch), or
activation-density resizing every ``prune_every`` epochs."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..scoring_data import first_batches
from .config import RunConfig


def epoch_callback(config: RunConfig, model: nn.Module, train_split: Any, record: dict[str, Any],
                   task: Any = "classification"):
    """An ``on_epoch_end`` callback for :func:`earlyprune.train.train` and the list it fills with events.
    ``task`` is the loss the early pruner's criterion scores with (activation density needs none).

    Events (prunes or resizes, with widths and sizes before and after) go to ``record['prune_events']``.
    """
    pruning = config.pruning
    scoring = train_split.loader(config.data.batch_size, shuffle=True, augment=False, seed=config.seed + 1)
    scoring_batches = first_batches(scoring, pruning.score_batches)
    events: list[dict[str, Any]] = []
    record["prune_events"] = events
    if pruning.method == "activation_density":
        return _activation_density(config, model, scoring_batches, record, events), events

    from ..distributed import rewrap
    from ..early import EarlyPruner

    pruner = EarlyPruner(
        model, pruning.method, None if pruning.budget else pruning.sparsity, scoring_batches,
        structured=pruning.structured,
        at_epoch=pruning.prune_epoch, cap_epoch=None if pruning.prune_epoch else max(2, config.training.epochs // 2),
        seed=config.seed, task=task, preset=pruning.preset, budget=pruning.channel_budget(config.data.batch_size),
        **_score_mode(pruning), **_unstructured_settings(pruning), **pruning.options,
    )

    def on_epoch_end(epoch: int, model: nn.Module, optimizer):
        event = pruner.step(epoch, optimizer=optimizer)
        if event is not None:
            events.append(event.as_dict())
            record["scoring_seconds"] = record.get("scoring_seconds", 0.0) + event.seconds
            if not pruning.structured:
                record["collapsed"] = pruner.result.info["collapsed"]
                record["mask_sparsity"] = pruner.result.sparsity()
            if pruning.budget is not None:
                record["budget_reached"] = pruner.result.info["budget"]
            if pruning.structured and isinstance(model, nn.parallel.DistributedDataParallel):
                return rewrap(model)  # DDP holds the old parameters: wrap the shrunk module anew
        return None

    return on_epoch_end, events


def _activation_density(config: RunConfig, model: nn.Module, scoring_batches, record, events):
    from ..activation_density import ActivationDensityPruner, run_settings
    from ..distributed import rewrap, unwrap

    # Built before training so that the first epoch is measured too; the training optimizer, created by
    # the training loop, is handed over at each epoch's end. --option values set the pruner's settings
    # (last_epoch: half the epochs unless given).
    pruner = ActivationDensityPruner(unwrap(model), scoring_batches[0][0][:1],
                                     prune_every=config.pruning.prune_every,
                                     **run_settings(config.pruning.options, config.training.epochs))

    def on_epoch_end(epoch: int, model: nn.Module, optimizer):
        event = pruner.epoch_end(epoch, optimizer=optimizer)
        if event is not None:
            events.append(event.as_dict())
            if isinstance(model, nn.parallel.DistributedDataParallel):
                return rewrap(model)
        return None

    return on_epoch_end


def _score_mode(pruning) -> dict:
    """``train`` for the pruner when ``score_mode`` is not the criterion's own."""
    from .config import SCORE_MODES

    train = SCORE_MODES[pruning.score_mode]
    return {} if train is None else {"train": train}


def _unstructured_settings(pruning) -> dict:
    """Settings only unstructured pruning takes (the CLI refuses them with --structured)."""
    if pruning.structured:
        return {}
    settings = {"scope": pruning.scope, "rule": pruning.rule, "on_collapse": pruning.on_collapse}
    if pruning.iterations:
        settings.update(schedule="exponential", iterations=pruning.iterations)
    return settings
