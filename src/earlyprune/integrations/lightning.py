"""PyTorch Lightning callback: prune at initialisation, early (EarlyCroP) or during training (activation density).

::

    from earlyprune.integrations.lightning import PruningCallback

    trainer = lightning.Trainer(max_epochs=30, callbacks=[PruningCallback("crop", 0.5, structured=True)])
    trainer.fit(module, datamodule)

When it acts:

* ``when="init"``: on ``on_train_start``, before the first training step (the optimizers and the training
  dataloader exist then; the sanity-check validation before it does not change the weights);
* ``when="early"`` (default): on ``on_train_epoch_end``, by :class:`earlyprune.EarlyPruner`: EarlyCroP's
  weight-distance trigger, ``cap_epoch`` at the latest, or exactly ``at_epoch`` (epochs count from 1, so
  ``at_epoch=2`` prunes after the second epoch's training);
* ``method="activation_density"``: resizes every ``prune_every`` epochs (until ``last_epoch``), by
  :class:`earlyprune.ActivationDensityPruner`.

What it changes: the LightningModule (or its submodule ``module=``, e.g. ``"net"``, the one its
``training_step`` calls: activation density counts that module's forward passes). After a structured prune
every optimizer of ``trainer.optimizers`` is remapped in place to the new, narrower parameters with its
state sliced (momentum carries on), so the LR schedulers holding them go on at the same step; masks are
attached to every optimizer. Each prune is logged to every ``trainer.loggers`` as ``prune/epoch``,
``prune/sparsity``, ``prune/params_before``/``after``, ``prune/nonzero_*``, ``prune/flops_*`` and
``prune/seconds`` (at ``trainer.global_step``), and kept in :attr:`PruningCallback.events`.

Scoring data: ``data=`` (``(inputs, targets)`` batches or a loader), else the first ``score_batches``
batches of the training dataloader, turned into ``(inputs, targets)`` by ``batch_fn`` when its batches are
something else. Structured pruning is refused under a multi-process strategy (DDP holds the old
parameters). A checkpoint of a structurally pruned module has the narrower shapes: reload it with
:func:`earlyprune.structured.saving.load_shrunk` after saving with ``save_shrunk``, or rebuild the module at
the new widths.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PruningError
from ._core import BatchFn, TrainingEvent, TrainingPruner, missing_extra

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - depends on the installation
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer
    except ImportError as exc:
        raise missing_extra("lightning", "lightning") from exc

__all__ = ["PruningCallback"]


class PruningCallback(Callback):
    """Prune the LightningModule while it trains (see the module docstring for when and how).

    Args:
        method, sparsity, when, structured, data, score_batches, at_epoch, cap_epoch, relative_threshold,
            schedule, task, prune_every, last_epoch, min_fraction, count_every, **prune_options: as for
            :class:`earlyprune.integrations._core.TrainingPruner`.
        module: attribute path of the submodule to prune (``"net"``, ``"model.backbone"``); default the
            LightningModule itself.
        batch_fn: turns one training batch into ``(inputs, targets)`` for scoring (default: as it is).
        log_prefix: prefix of the logged metrics' names.
    """

    def __init__(self, method: Any = "crop", sparsity: float = 0.9, *, module: str | None = None,
                 batch_fn: BatchFn | None = None, log_prefix: str = "prune/", **options: Any):
        super().__init__()
        self.pruner = TrainingPruner(method, sparsity, **options)
        self.module_path = module
        self.batch_fn = batch_fn
        self.log_prefix = log_prefix

    @property
    def events(self) -> list[TrainingEvent]:
        """Every prune made, in order."""
        return self.pruner.events

    @property
    def result(self) -> Any:
        """The :class:`~earlyprune.Masks` or :class:`~earlyprune.structured.ChannelPruneResult` of the last prune."""
        return self.pruner.result

    def target(self, pl_module: LightningModule) -> nn.Module:
        """The module pruned: ``module=`` inside the LightningModule, or the LightningModule itself."""
        if self.module_path is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module_path)
        except AttributeError as exc:
            raise PruningError(f"PruningCallback(module={self.module_path!r}): the LightningModule has no such "
                               f"submodule ({exc})") from exc

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.pruner.structured and trainer.world_size > 1:
            raise PruningError(
                f"structured pruning under a {trainer.world_size}-process strategy is not supported: the DDP wrapper "
                "holds the parameters that surgery replaces; prune unstructured, or on one device"
            )
        event = self.pruner.start(self.target(pl_module), trainer.optimizers, lambda: trainer.train_dataloader,
                                  self.batch_fn)
        self._log(trainer, event)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.pruner.active:
            return
        event = self.pruner.epoch_end(trainer.current_epoch + 1, self.target(pl_module), trainer.optimizers)
        self._log(trainer, event)

    def _log(self, trainer: Trainer, event: TrainingEvent | None) -> None:
        if event is None:
            return
        metrics = event.metrics(self.log_prefix)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
