"""Hugging Face ``Trainer`` callback: prune at initialisation, early (EarlyCroP) or during training.

::

    from earlyprune.integrations.transformers import PruningCallback

    trainer = transformers.Trainer(model=model, args=args, train_dataset=train)
    PruningCallback.attach(trainer, "crop", 0.5, structured=True, at_epoch=2)   # or callbacks=[PruningCallback(...)]
    trainer.train()

When it acts: ``when="init"`` on ``on_train_begin`` (after the Trainer made its optimizer and scheduler,
before the first step); ``when="early"`` (default) on ``on_epoch_end`` through
:class:`earlyprune.EarlyPruner` (EarlyCroP's trigger, ``cap_epoch`` or ``at_epoch``, epochs counted from
1); ``method="activation_density"`` resizes every ``prune_every`` epochs (ReLU models only: BERT's and
GPT-2's GELU have no exact zeros, and are refused).

The optimizer and LR scheduler are the Trainer's: after a structured prune its optimizer (inside
accelerate's wrapper) is remapped in place to the new parameters, their state sliced, so the scheduler goes
on at the same step; masks are attached to it. Attention heads are removed whole where the model declares
them (see :mod:`earlyprune.structured.groups`).

Scoring data: ``data=`` (``(inputs, targets)`` batches or a loader), else the first ``score_batches``
batches of the Trainer's training dataloader, each dict batch split into ``(inputs without "labels",
labels)``. The criterion's loss is the ``task``'s (cross-entropy on ``.logits`` by default); pass
``loss_fn`` or ``task`` for other heads.

Logging: with :meth:`PruningCallback.attach` (or ``callback.trainer = trainer``) each prune goes through
``trainer.log``, so every reporting integration (TensorBoard, W&B, ...) and ``trainer.state.log_history``
get ``prune/epoch``, ``prune/sparsity``, ``prune/params_before``/``after``, ...; without the trainer the
event is appended to ``state.log_history`` only. Structured pruning is refused when training runs in
several processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import PruningError
from ._core import BatchFn, TrainingEvent, TrainingPruner, missing_extra

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise missing_extra("transformers", "hf") from exc

__all__ = ["PruningCallback", "split_labels"]


def split_labels(batch: Any) -> Any:
    """A Hugging Face batch (a dict holding ``labels``) as ``(inputs, labels)``; other batches as they are."""
    if isinstance(batch, Mapping) and "labels" in batch:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch["labels"]
    return batch


class PruningCallback(TrainerCallback):
    """Prune the Trainer's model while it trains (see the module docstring).

    Args:
        method, sparsity, when, structured, data, score_batches, at_epoch, cap_epoch, relative_threshold,
            schedule, task, prune_every, last_epoch, min_fraction, count_every, **prune_options: as for
            :class:`earlyprune.integrations._core.TrainingPruner`.
        batch_fn: turns one training batch into ``(inputs, targets)`` (default :func:`split_labels`).
        log_prefix: prefix of the logged metrics' names.
    """

    def __init__(self, method: Any = "crop", sparsity: float = 0.9, *, batch_fn: BatchFn | None = split_labels,
                 log_prefix: str = "prune/", **options: Any):
        self.pruner = TrainingPruner(method, sparsity, **options)
        self.batch_fn = batch_fn
        self.log_prefix = log_prefix
        self.trainer: Any = None

    @classmethod
    def attach(cls, trainer: Any, *args: Any, **kwargs: Any) -> "PruningCallback":
        """Make the callback, add it to ``trainer`` and log its events through ``trainer.log``."""
        callback = cls(*args, **kwargs)
        callback.trainer = trainer
        trainer.add_callback(callback)
        return callback

    @property
    def events(self) -> list[TrainingEvent]:
        """Every prune made, in order."""
        return self.pruner.events

    @property
    def result(self) -> Any:
        """The :class:`~earlyprune.Masks` or :class:`~earlyprune.structured.ChannelPruneResult` of the last prune."""
        return self.pruner.result

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if self.pruner.structured and getattr(args, "world_size", 1) > 1:
            raise PruningError(
                f"structured pruning with {args.world_size} training processes is not supported: the distributed "
                "wrapper holds the parameters that surgery replaces; prune unstructured, or in one process"
            )
        if model is None:
            raise PruningError("the Trainer gave the callback no model")
        event = self.pruner.start(model, _optimizers(optimizer), lambda: train_dataloader, self.batch_fn)
        self._log(state, event)

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self.pruner.active:
            return
        epoch = int(round(state.epoch)) if state.epoch is not None else len(self.events) + 1
        event = self.pruner.epoch_end(epoch, model, _optimizers(optimizer))
        self._log(state, event)

    def _log(self, state: Any, event: TrainingEvent | None) -> None:
        if event is None:
            return
        metrics = event.metrics(self.log_prefix)
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:
            state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})


def _optimizers(optimizer: Any) -> list[Any]:
    return [] if optimizer is None else [optimizer]
