"""One plain, fast training loop: SGD/Adam, the papers' step schedules, cosine and one-cycle, evaluation
every epoch, wall time and peak memory, progress bars that stay quiet when not on a terminal.

It works with any model and any iterable of ``(inputs, targets)`` batches, and takes an optional
``on_epoch_end`` callback through which early pruning (:class:`earlyprune.EarlyPruner`) and
activation-density resizing act between epochs.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .batches import to_device
from .calling import predict
from .model_state import model_device, model_dtype, preserved_modes
from .errors import PruningError

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("step", "cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """A training recipe. Defaults: the SNIP/GraSP recipe (SGD 0.1, momentum 0.9, wd 5e-4, x0.1 at 50%/75%).

    Each field declares itself as a setting in its ``metadata`` (help, bounds, choices; see
    :func:`earlyprune.experiments.config.setting`): ``earlyprune run`` makes its flags from them, sweep
    files are checked with them, and so is every TrainConfig when it is built.
    """

    epochs: int = field(default=20, metadata={"help": "training epochs", "min": 0})
    lr: float = field(default=0.1, metadata={"help": "learning rate (the peak one for onecycle)", "above": 0})
    optimizer: str = field(default="sgd", metadata={"help": "optimizer", "choices": OPTIMIZERS})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum", "min": 0})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum (SGD)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay (L2)", "min": 0})
    lr_schedule: str = field(default="step", metadata={"help": "learning-rate schedule", "choices": LR_SCHEDULES})
    #: For ``"step"``: fractions of the epochs at which the LR is multiplied by ``gamma``.
    milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata={
        "help": "step schedule: fractions of the epochs at which the learning rate is multiplied by gamma",
        "above": 0})
    gamma: float = field(default=0.1, metadata={"help": "step schedule: learning-rate factor at each milestone",
                                                "above": 0})
    progress: bool | None = field(default=None, metadata={"setting": False})  # None: a bar only on a terminal

    def __post_init__(self) -> None:
        from .experiments.config import check_declared  # the checks the declarations above make

        check_declared(self)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1].test_accuracy if self.history else None

    @property
    def best_accuracy(self) -> float | None:
        values = [r.test_accuracy for r in self.history if r.test_accuracy is not None]
        return max(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "history": [asdict(r) for r in self.history],
            "train_seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "final_accuracy": self.final_accuracy,
            "best_accuracy": self.best_accuracy,
        }


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer the recipe names, over all of ``model``'s parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step LR scheduler for the recipe (per-step so one-cycle and cosine are smooth)."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "step":
        milestones = sorted({max(1, round(f * config.epochs)) * steps_per_epoch for f in config.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any]) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader`` (in eval mode, every submodule's own
    mode restored after)."""
    device, dtype = model_device(model), model_dtype(model)
    loss_sum, correct, count = 0.0, 0, 0
    with preserved_modes(model, train=False):
        for inputs, targets in loader:
            inputs, targets = to_device(inputs, device, dtype), targets.to(device)
            outputs = predict(model, inputs)
            loss_sum += float(F.cross_entropy(outputs, targets, reduction="sum"))
            correct += int((outputs.argmax(1) == targets).sum())
            count += targets.shape[0]
    if count == 0:
        raise PruningError("the evaluation data is empty")
    return loss_sum / count, correct / count


EpochCallback = Callable[[int, nn.Module, torch.optim.Optimizer], Any]


def train(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any] | None,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch_end: EpochCallback | None = None,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs and evaluate after each.

    ``on_epoch_end(epoch, model, optimizer)`` runs after each epoch's training and before its
    evaluation, so a prune it makes is reflected in that epoch's accuracy. It may change the model in
    place (masks, or physical surgery that slices the optimizer's state in place); if it returns a
    module, training goes on with that one (e.g. a DDP wrapper rebuilt around a shrunk model).
    """
    optimizer = optimizer or make_optimizer(model, config)
    steps_per_epoch = _length(train_loader)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch or 1)
    result = TrainResult()
    device, dtype = model_device(model), model_dtype(model)
    progress = _progress(config.progress, config.epochs * (steps_per_epoch or 0), description)
    started = time.perf_counter()
    reset_peak_memory(device)
    try:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            loss_sum, correct, count = 0.0, 0, 0
            for inputs, targets in train_loader:
                inputs, targets = to_device(inputs, device, dtype), targets.to(device)
                optimizer.zero_grad(set_to_none=True)
                outputs = predict(model, inputs)
                loss = F.cross_entropy(outputs, targets)
                loss.backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    loss_sum += float(loss) * targets.shape[0]
                    correct += int((outputs.argmax(1) == targets).sum())
                    count += targets.shape[0]
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(epoch=epoch, loss=f"{float(loss):.3f}", refresh=False)
            if count == 0:
                raise PruningError("the training data is empty")
            if not math.isfinite(loss_sum):
                raise PruningError(
                    f"training diverged at epoch {epoch} (loss {loss_sum / count}); lower the learning rate"
                )
            if on_epoch_end is not None:
                replacement = on_epoch_end(epoch, model, optimizer)
                if isinstance(replacement, nn.Module):
                    model = replacement
            test_loss = test_acc = None
            if test_loader is not None:
                test_loss, test_acc = evaluate(model, test_loader)
            result.history.append(
                EpochRecord(epoch, loss_sum / count, correct / count, test_loss, test_acc,
                            optimizer.param_groups[0]["lr"], time.perf_counter() - epoch_start)
            )
    finally:
        if progress is not None:
            progress.close()
    result.seconds = time.perf_counter() - started
    result.peak_memory_mb = peak_memory_mb(device)
    return result


def reset_peak_memory(device: torch.device | None = None) -> None:
    """Start a new peak-memory measurement, so that one training run in a long-lived process (the demo,
    a sweep worker) reports its own peak, not the largest of every run before it.

    On CUDA: ``torch.cuda.reset_peak_memory_stats``. On the CPU under Linux: writing ``5`` to
    ``/proc/self/clear_refs`` resets the process's peak resident set size (``VmHWM``) to its current size.
    Elsewhere the peak cannot be reset and stays the process's lifetime peak.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory in MiB since :func:`reset_peak_memory`: allocated GPU memory on CUDA, else the process's
    peak resident set size (``VmHWM`` from ``/proc/self/status`` on Linux, ``ru_maxrss`` elsewhere)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _progress(enabled: bool | None, total: int, description: str):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total or None, desc=description, leave=False, dynamic_ncols=True)
