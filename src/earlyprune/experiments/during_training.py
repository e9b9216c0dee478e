"""Pruning during training for ``earlyprune run``: early (EarlyCroP's trigger or a fixed epoch)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .config import RunConfig


def epoch_callback(config: RunConfig, model: nn.Module, train_split: Any, record: dict[str, Any]):
    """An ``on_epoch_end`` callback for :func:`earlyprune.train.train` and the list it fills with events.

    The events are also written into ``record['prune_events']`` as they happen.
    """
    from ..early import EarlyPruner

    scoring = train_split.loader(config.batch_size, shuffle=True, augment=False, seed=config.seed + 1)
    scoring_batches = [next(iter(scoring))]
    pruner = EarlyPruner(
        model, config.method, config.sparsity, scoring_batches, structured=config.structured,
        at_epoch=config.prune_epoch, cap_epoch=None if config.prune_epoch else max(2, config.epochs // 2),
        scope=config.scope, seed=config.seed,
        **({"schedule": "exponential", "iterations": config.iterations} if config.iterations else {}),
    )
    events: list[dict[str, Any]] = []
    record["prune_events"] = events

    def on_epoch_end(epoch: int, model: nn.Module, optimizer) -> None:
        event = pruner.step(epoch, optimizer=optimizer)
        if event is not None:
            events.append(event.as_dict())
            record["scoring_seconds"] = record.get("scoring_seconds", 0.0) + event.seconds
            if not config.structured:
                record["collapsed"] = pruner.result.info["collapsed"]

    return on_epoch_end, events
