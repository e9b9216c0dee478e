"""Optional TensorBoard logging of a run: ``earlyprune run --tensorboard DIR`` (and ``earlyprune sweep
--tensorboard DIR``, one folder per cell).

Each run writes its event files to ``DIR/<run key>`` (the key of :meth:`RunConfig.key`, so a sweep's runs
never mix and a run repeated writes where it wrote before). Per epoch, at the step of the epoch number:

* ``train/loss`` and ``train/<metric>`` (the task's main metric on the training batches: accuracy, RMSE,
  perplexity, the return of the training episodes), ``test/loss`` and ``test/<name>`` for every test metric
  of the epoch (accuracy; RMSE and R²; perplexity and token accuracy; return and its spread);
* ``lr``, the learning rate at the end of the epoch;
* ``model/params`` and ``model/nonzero_params`` of the model as it is then (channels removed by
  structured pruning leave ``params``, masked weights leave ``nonzero_params``) and ``model/sparsity``,
  ``1 - nonzero_params / dense params``: every parameter counts, biases and norms included.

Each prune (at initialisation, at step 0; early or by activation density, at its epoch) adds the scalars
``prune/achieved_sparsity`` (as the run's record measures it: the masks' weight sparsity where there are
masks, else the fraction of the dense model's parameters removed), ``prune/params`` and
``prune/nonzero_params``, and a text entry ``prune`` naming the method, the epoch, the sparsity reached and
the reason. The run's settings are a text entry ``settings``.

The values are those the loop records (:class:`earlyprune.train.EpochRecord`): the hook is called where
each epoch's summary line is written (:func:`earlyprune.train.train`, :func:`earlyprune.rl.loop.train_dqn`).
TensorBoard stores them as float32.

The writer is ``torch.utils.tensorboard.SummaryWriter``, imported only when a log is opened; without the
``tensorboard`` package that is a :class:`TensorBoardMissingError` saying ``pip install
earlyprune[tensorboard]``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

INSTALL_HINT = "pip install earlyprune[tensorboard]"


class TensorBoardMissingError(ModuleNotFoundError, ValueError):
    """The ``tensorboard`` package is not installed (a ValueError too, so the command line reports it
    without a traceback)."""


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported now; :class:`TensorBoardMissingError` saying how
    to install the package it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch raises a plain ImportError when tensorboard is missing or too old
        raise TensorBoardMissingError(
            f"--tensorboard needs the tensorboard package, which is not installed (or too old): {INSTALL_HINT} "
            f"({type(error).__name__}: {error})"
        ) from error
    return SummaryWriter


def run_log_dir(root: str | os.PathLike[str], name: str) -> Path:
    """Where run ``name`` (its key) writes under ``root``: ``root/name``."""
    return Path(root).expanduser() / name


def _counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of ``model`` (unwrapped from DDP), each shared parameter once."""
    from .distributed import unwrap
    from .metrics import parameter_counts

    return parameter_counts(unwrap(model))


class TensorBoardLog:
    """The event files of one run in ``log_dir`` (see the module). Close it (or use it as a context
    manager): the events are flushed then."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        writer_class = summary_writer_class()
        self.log_dir = Path(log_dir)
        self.writer = writer_class(log_dir=str(self.log_dir))
        self._events_seen = 0

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.writer.close()

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        """``value`` at ``step``; None (nothing measured, e.g. no TD loss before DQN learns) is skipped."""
        if value is not None:
            self.writer.add_scalar(tag, float(value), step)

    def settings(self, run_record: Mapping[str, Any]) -> None:
        """The run's key and settings as the text entry ``settings``."""
        self.writer.add_text("settings", "    " + json.dumps(dict(run_record), sort_keys=True, default=str), 0)

    def epoch(self, record: Any, model: nn.Module, dense_params: int) -> None:
        """One :class:`~earlyprune.train.EpochRecord` and the size of ``model`` after it."""
        step = record.epoch
        self.scalar("train/loss", record.train_loss, step)
        self.scalar(f"train/{record.metric_name}", record.train_metric, step)
        self.scalar("test/loss", record.test_loss, step)
        for name, value in (record.test_metrics or {}).items():
            if name != "loss":
                self.scalar(f"test/{name}", value, step)
        self.scalar("lr", record.lr, step)
        params, nonzero = _counts(model)
        self.scalar("model/params", params, step)
        self.scalar("model/nonzero_params", nonzero, step)
        self.scalar("model/sparsity", 1.0 - nonzero / max(1, dense_params), step)

    def prune(self, method: str, epoch: int, achieved_sparsity: float, params: int, nonzero: int,
              reason: str = "") -> None:
        """One prune (``epoch`` 0: at initialisation): scalars and a text line."""
        self.scalar("prune/achieved_sparsity", achieved_sparsity, epoch)
        self.scalar("prune/params", params, epoch)
        self.scalar("prune/nonzero_params", nonzero, epoch)
        when = "at initialisation" if epoch == 0 else f"after epoch {epoch}"
        why = f" ({reason})" if reason else ""
        sparsity = f"{achieved_sparsity:.4f}" if math.isfinite(achieved_sparsity) else str(achieved_sparsity)
        self.writer.add_text("prune", f"{method} {when}{why}: achieved sparsity {sparsity}, {nonzero:,} of "
                             f"{params:,} parameters non-zero", epoch)

    def initial_prune(self, method: str, model: nn.Module, dense_params: int,
                      mask_sparsity: float | None = None) -> None:
        """A prune at initialisation (step 0): ``mask_sparsity`` the masks' weight sparsity (unstructured),
        else the fraction of the ``dense_params`` removed."""
        params, nonzero = _counts(model)
        achieved = 1.0 - nonzero / max(1, dense_params) if mask_sparsity is None else mask_sparsity
        self.prune(method, 0, achieved, params, nonzero)

    def epoch_hook(self, run_record: dict[str, Any]) -> Callable[[Any, nn.Module], None]:
        """The ``on_epoch_record`` hook of the training loops for the run whose record is ``run_record``
        (it holds ``method`` and ``dense_params``): the prune events added to ``run_record['prune_events']``
        since the last epoch (early pruning, activation density), then the epoch."""

        def hook(record: Any, model: nn.Module) -> None:
            events = run_record.get("prune_events") or []
            for event in events[self._events_seen:]:
                self._prune_event(run_record, event)
            self._events_seen = len(events)
            self.epoch(record, model, run_record["dense_params"])
            self.writer.flush()

        return hook

    def _prune_event(self, run_record: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        dense = max(1, int(run_record["dense_params"]))
        params = int(event["params_after"])
        nonzero = int(event.get("nonzero_after", params))  # a resize removes channels: nothing is masked
        achieved = run_record.get("mask_sparsity")  # the masks' weight sparsity, set at an unstructured prune
        if achieved is None or event.get("structured", True):
            achieved = 1.0 - nonzero / dense
        self.prune(str(run_record.get("method")), int(event["epoch"]), float(achieved), params, nonzero,
                   str(event.get("reason", "")))


def open_log(root: str | os.PathLike[str] | None, name: str) -> TensorBoardLog | None:
    """A :class:`TensorBoardLog` in ``root/name``, or None without ``root``. Under ``torchrun`` only rank 0
    (``RANK`` 0) writes: the others get None."""
    if root is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    return TensorBoardLog(run_log_dir(root, name))
