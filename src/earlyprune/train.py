"""One plain, fast training loop: SGD/Adam, the papers' step schedules, cosine and one-cycle, evaluation
every epoch, wall time and peak memory, a progress bar on a terminal and plain progress lines with ETA
elsewhere (:mod:`earlyprune.progress`), each epoch's metrics printed as it ends.

It works with any model and any iterable of ``(inputs, targets)`` batches, takes its loss and metric from
the task (:mod:`earlyprune.tasks`: classification with accuracy by default, regression with RMSE and R²,
language modelling with perplexity), and takes an optional ``on_epoch_end`` callback through which early pruning (:class:`earlyprune.EarlyPruner`) and
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
from torch import nn

from .allocator import release_free_memory
from .acceleration import AMP_MODES, COMPILE_MODES, StepModel, autocast, check_amp, compile_failure, grad_scaler
from .batches import to_device
from .energy import EnergyMeter
from .calling import predict
from .errors import PruningError
from .model_state import model_device, model_dtype, preserved_modes
from .preflight import check_trainable
from .progress import epoch_summary
from .progress import progress as progress_reporter
from .settings import check_declared
from .tasks import Task
from .tasks import get as get_task

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
    #: CPU threads of torch: on the CPU the result depends on them (the order of floating-point sums), so
    #: ``earlyprune run``/``sweep`` resolve None to the count used and key the run by it.
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads torch uses (torch.set_num_threads); part of the run's key: on the CPU the result "
                "depends on it", "min": 1, "none": "torch's default, resolved and recorded"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model for training (inductor; compiled once more after structured surgery); "
                "part of the run's key when on"})
    compile_mode: str = field(default="default", metadata={
        "help": "torch.compile's mode with compile: reduce-overhead records CUDA graphs on a GPU (fewer kernel "
                "launches: what helps small, launch-bound models); max-autotune also searches kernels",
        "choices": COMPILE_MODES})
    amp: str = field(default="none", metadata={
        "help": "mixed precision for training (autocast; weights stay float32): bf16 (a GPU with bf16, or a CPU "
                "with AVX512-BF16/AMX) or fp16 (CUDA only, with a gradient scaler)", "choices": ("none", *AMP_MODES)})
    progress: bool | None = field(default=None, metadata={"setting": False})  # None: bar on a terminal, else lines

    def __post_init__(self) -> None:
        check_declared(self)
        if self.compile_mode != "default" and not self.compile:
            raise PruningError(f"compile_mode={self.compile_mode!r} applies with compile on (--compile)")


@dataclass
class EpochRecord:
    """One epoch: losses and the task's main metric (``metric_name``) on the training batches (as trained,
    in training mode) and on the test set; ``test_metrics`` holds every metric of the test set (RMSE and
    R² for regression). ``train_accuracy``/``test_accuracy`` are the accuracy for classification, None
    for other tasks."""

    epoch: int
    train_loss: float
    train_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    lr: float
    seconds: float
    metric_name: str = "accuracy"
    train_metric: float | None = None
    test_metric: float | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    task: str = "classification"
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    #: Energy of the machine's CPU packages (RAPL) and GPUs (NVML) during training, where the hardware
    #: reports it (:mod:`earlyprune.energy`); None and "not measured" otherwise.
    energy_joules: float | None = None
    energy_source: str = "not measured"

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1].test_accuracy if self.history else None

    @property
    def best_accuracy(self) -> float | None:
        values = [r.test_accuracy for r in self.history if r.test_accuracy is not None]
        return max(values) if values else None

    @property
    def final_metric(self) -> float | None:
        """The task's main metric on the test set after the last epoch."""
        return self.history[-1].test_metric if self.history else None

    @property
    def best_metric(self) -> float | None:
        """The best test value of the task's main metric over the epochs (highest accuracy, lowest RMSE or
        perplexity)."""
        values = [r.test_metric for r in self.history if r.test_metric is not None and r.test_metric == r.test_metric]
        if not values:
            return None
        return max(values) if self.higher_is_better else min(values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "history": [asdict(r) for r in self.history],
            "train_seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "final_accuracy": self.final_accuracy,
            "best_accuracy": self.best_accuracy,
            "task": self.task,
            "metric_name": self.metric_name,
            "final_metric": self.final_metric,
            "best_metric": self.best_metric,
            "energy_joules": self.energy_joules,
            "energy_source": self.energy_source,
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


def _check_targets(targets: Any) -> None:
    """A clear error for targets that are not one tensor (a list, a NumPy array, a dict of them)."""
    if not isinstance(targets, torch.Tensor):
        raise PruningError(
            f"the targets of each batch must be one tensor, got {type(targets).__name__}; yield (inputs, "
            "torch.tensor(targets)) from the loader (a DataLoader's default collate does this)"
        )


def evaluate(model: nn.Module, loader: Iterable[Any], task: str | Task = "classification") -> tuple[float, float]:
    """Mean loss and the task's main metric of ``model`` over ``loader``: cross-entropy and accuracy for
    classification (the default), MSE and RMSE for regression, cross-entropy per token and perplexity for
    language modelling. In eval mode, every submodule's own mode restored after."""
    task = get_task(task)
    metrics = evaluate_metrics(model, loader, task)
    return metrics["loss"], metrics[task.metric]


@torch.no_grad()
def evaluate_metrics(model: nn.Module, loader: Iterable[Any], task: str | Task = "classification") -> dict[str, float]:
    """Every metric of ``task`` for ``model`` over ``loader`` (``{"loss": ..., "accuracy": ...}``,
    ``{"loss", "rmse", "r2"}``, ``{"loss", "perplexity", "token_accuracy"}``), in eval mode."""
    task = _supervised(task)
    device, dtype = model_device(model), model_dtype(model)
    meter = task.meter()
    with preserved_modes(model, train=False):
        for inputs, targets in loader:
            inputs, targets = to_device(inputs, device, dtype), to_device(targets, device)
            outputs = predict(model, inputs)
            if not meter.count:
                _check_targets(targets)
                task.check(outputs, targets)
            meter.update(outputs, targets)
    if meter.count == 0:
        raise PruningError("the evaluation data is empty")
    return meter.result()


def _supervised(task: str | Task) -> Task:
    task = get_task(task)
    if not task.supervised:
        raise PruningError(f"task {task.name!r} is not supervised (its loss comes from transitions): the training "
                           "loop and evaluation of earlyprune.train do not apply; an agent brings its own loop")
    return task


EpochCallback = Callable[[int, nn.Module, torch.optim.Optimizer], Any]


def train(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any] | None,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch_end: EpochCallback | None = None,
    description: str = "train",
    task: str | Task = "classification",
    on_epoch_record: Callable[[EpochRecord, nn.Module], Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs and evaluate after each.

    ``on_epoch_end(epoch, model, optimizer)`` runs after each epoch's training and before its
    evaluation, so a prune it makes is reflected in that epoch's accuracy. It may change the model in
    place (masks, or physical surgery that slices the optimizer's state in place); if it returns a
    module, training goes on with that one (e.g. a DDP wrapper rebuilt around a shrunk model).

    The loss minimised and the metric recorded are the ``task``'s (a name or a
    :class:`~earlyprune.tasks.Task`): each :class:`EpochRecord` holds its main metric as ``train_metric``
    and ``test_metric`` (and the accuracy as ``train_accuracy``/``test_accuracy`` for classification).

    ``on_epoch_record(record, model)`` is called with each epoch's :class:`EpochRecord` once it is recorded
    (where the epoch's summary line is written), e.g. :meth:`earlyprune.tensorboard_log.TensorBoardLog.epoch_hook`.
    """
    task = _supervised(task)
    classification = task.metric == "accuracy"
    check_trainable(model)  # a meta-device or all-frozen model: a hint now, not a raw torch error later
    if config.threads:
        torch.set_num_threads(config.threads)
    optimizer = optimizer or make_optimizer(model, config)
    steps_per_epoch = _length(train_loader)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch or 1)
    result = TrainResult(task=task.name, metric_name=task.metric, higher_is_better=task.higher_is_better)
    device, dtype = model_device(model), model_dtype(model)
    amp = None if config.amp == "none" else config.amp
    check_amp(amp, device)
    # compiled once more if surgery changes the shapes
    step_model = StepModel(model, compile=config.compile, mode=config.compile_mode)
    scaler = grad_scaler(amp, device)
    progress = _progress(config.progress, config.epochs * (steps_per_epoch or 0), description)
    started = time.perf_counter()
    reset_peak_memory(device)
    energy_meter = EnergyMeter().start()
    checked = False
    shown_steps = 0
    try:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            forward = step_model.use(model)
            meter = task.meter()
            for inputs, targets in train_loader:
                inputs, targets = to_device(inputs, device, dtype), to_device(targets, device)
                optimizer.zero_grad(set_to_none=True)
                step_model.step_begins()
                with autocast(amp, device):
                    if checked:
                        outputs = predict(forward, inputs)
                    else:
                        outputs = _first_prediction(forward, inputs)
                    if not checked:  # the task's loss must apply (checked once: the checks synchronise a GPU)
                        _check_targets(targets)
                        task.check(outputs, targets)
                        checked = True
                    loss = task.loss(outputs, targets)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                with torch.no_grad():  # the meters accumulate on the device: no host synchronisation per step
                    meter.update(outputs.detach().float() if amp else outputs.detach(), targets)
                if progress is not None:
                    progress.update(1)
                    shown_steps += 1
                    if shown_steps % _LOSS_SHOWN_EVERY == 1:  # reading the loss synchronises a GPU: not every step
                        progress.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}", refresh=False)
            if meter.count == 0:
                raise PruningError("the training data is empty")
            trained = meter.result()
            if not math.isfinite(trained["loss"]):
                raise PruningError(
                    f"training diverged at epoch {epoch} (loss {trained['loss']}); lower the learning rate"
                )
            if on_epoch_end is not None:
                replacement = on_epoch_end(epoch, model, optimizer)
                if isinstance(replacement, nn.Module):
                    model = replacement
            tested: dict[str, float] = {}
            if test_loader is not None:
                tested = evaluate_metrics(model, test_loader, task)
            train_metric, test_metric = trained[task.metric], tested.get(task.metric)
            result.history.append(
                EpochRecord(epoch, trained["loss"], train_metric if classification else None, tested.get("loss"),
                            test_metric if classification else None, optimizer.param_groups[0]["lr"],
                            time.perf_counter() - epoch_start, metric_name=task.metric,
                            train_metric=train_metric, test_metric=test_metric, test_metrics=tested)
            )
            if progress is not None:  # the epoch's metrics in the run's log as soon as it ends
                progress.write(epoch_summary(result.history[-1], config.epochs, description))
            if on_epoch_record is not None:
                on_epoch_record(result.history[-1], model)
    finally:
        if progress is not None:
            progress.close()
    result.seconds = time.perf_counter() - started
    result.peak_memory_mb = peak_memory_mb(device)
    result.energy_joules, result.energy_source = energy_meter.stop()
    return result


def _first_prediction(model: nn.Module, inputs: Any) -> Any:
    """The model's prediction on the first batch; an error there (inputs of a shape or type the model
    cannot take) becomes a :class:`PruningError` that says what the inputs were."""
    try:
        return predict(model, inputs)
    except PruningError:
        raise
    except Exception as error:
        failure = compile_failure(error)  # torch.compile itself failed (compile=True): say so
        if failure is not None:
            raise failure from error
        if not isinstance(error, (RuntimeError, ValueError, TypeError, IndexError)):
            raise
        shape = f"of shape {tuple(inputs.shape)} ({inputs.dtype})" if isinstance(inputs, torch.Tensor) else \
            f"a {type(inputs).__name__}"
        raise PruningError(f"the model cannot take the training inputs: a batch {shape} gave "
                           f"{type(error).__name__}: {error}. Is the model meant for this data (its input size, "
                           "channels, or token ids)?") from error


def reset_peak_memory(device: torch.device | None = None) -> None:
    """Start a new peak-memory measurement, so that one training run in a long-lived process (the demo,
    a sweep worker) reports its own peak, not the largest of every run before it.

    On CUDA: ``torch.cuda.reset_peak_memory_stats``. On the CPU under Linux: writing ``5`` to
    ``/proc/self/clear_refs`` resets the process's peak resident set size (``VmHWM``) to its current size.
    Elsewhere the peak cannot be reset and stays the process's lifetime peak. The heap's free memory is
    handed back first (:func:`earlyprune.allocator.release_free_memory`), so that what an earlier run freed
    but the allocator kept is not counted.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    release_free_memory()
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


_LOSS_SHOWN_EVERY = 25  # steps between the progress display's loss readings


def _progress(enabled: bool | None, total: int, description: str):
    """A bar on a terminal, plain lines with ETA at every 10% elsewhere, nothing when disabled
    (:mod:`earlyprune.progress`)."""
    return progress_reporter(enabled, total, description)
