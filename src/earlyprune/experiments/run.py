"""One experiment: build the model, prune (at init, early, or during training), train, evaluate, and
return the result record (every setting, sizes, FLOPs, the task's metric, times, memory, versions).

The task (its loss and metric, :mod:`earlyprune.tasks`) is the dataset's: a split's ``task`` attribute
(classification when it has none). The record holds it (``task``), its main metric (``metric_name``,
``final_metric``, ``best_metric``, ``higher_is_better``, every test metric of the last epoch in
``final_metrics``) and, for classification, ``final_accuracy``/``best_accuracy`` as before (None for other
tasks). An environment (``cartpole``) is run by :func:`earlyprune.rl.experiment.run_rl_experiment`
instead: a DQN agent, its mean episode return as the metric, the same record."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import platform
import time
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__, models
from ..allocator import release_free_memory, tune_cpu_allocator
from ..data import load_dataset
from ..distributed import init_from_environment, rank, unwrap, world_size
from ..errors import DeviceError, PruningError
from ..metrics import report
from ..preflight import check_model_fits, check_targets
from ..progress import default as progress_default
from ..pruning import methods, prune
from ..structured import prune_channels
from ..tasks import get as get_task
from ..tensorboard_log import TensorBoardLog, open_log
from ..train import train
from .config import DENSE, SCORE_MODES, RunConfig

if TYPE_CHECKING:
    from ..masks import Masks


def _progress_as_default(function):
    """``progress`` of :func:`run_experiment` also governs the loops deep in the library (pruning rounds:
    SynFlow's 100), through :func:`earlyprune.progress.default`: sweeps and the demo pass False."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with progress_default(signature.bind(*args, **kwargs).arguments.get("progress")):
            return function(*args, **kwargs)

    return wrapper


@_progress_as_default
def run_experiment(
    config: RunConfig,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    device: str | None = None,
    tensorboard: str | None = None,
) -> dict[str, Any]:
    """Run ``config`` and return its record. Deterministic on the CPU for a given seed.

    ``device`` is where the model trains: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``…, or ``"auto"``
    (CUDA when available). Under torchrun on GPUs each process takes ``cuda:LOCAL_RANK``. The device is
    recorded but not part of the run's key.

    ``threads`` (torch's CPU threads) applies when ``config.threads`` is not set; when neither is, the count
    torch uses is taken. Either way it enters the record and the run's key (:func:`with_threads`): on the CPU the
    result depends on it. The data, the model and their fit (labels within the model's outputs, inputs it
    accepts) are checked before any pruning or training starts.

    ``tensorboard`` (a folder) logs the run for TensorBoard into ``tensorboard/<run key>``
    (:mod:`earlyprune.tensorboard_log`: per-epoch losses, metrics, learning rate, size, and the prunes); the
    writer is closed when the run ends, on an error too. Not part of the key.

    On Linux with glibc the process's ``malloc`` is first set to keep freed blocks for reuse
    (:func:`earlyprune.allocator.tune_cpu_allocator`; 1.8x faster ProsPr scoring on the development CPU),
    unless ``EARLYPRUNE_MALLOC=system`` is set; ``record["cpu_allocator"]`` says which. The results are the
    same either way; the timings and the peak memory differ. When the run ends the free heap is handed back
    (:func:`earlyprune.allocator.release_free_memory`), so an idle worker does not hold the run's peak.
    """
    config = with_threads(config, threads)
    allocator = tune_cpu_allocator()
    board = open_log(tensorboard, config.key())
    try:
        record = _run_experiment(config, data_dir, cache_dir, progress, threads, device, board)
        record["cpu_allocator"] = allocator
        return record
    finally:
        release_free_memory()
        if board is not None:
            board.close()


def _run_experiment(config: RunConfig, data_dir: str | None, cache_dir: str | None, progress: bool | None,
                    threads: int | None, device: str | None, board: TensorBoardLog | None) -> dict[str, Any]:
    data, network, pruning = config.data, config.network, config.pruning
    if pruning.method != DENSE and pruning.method.lower() not in methods():
        raise PruningError(f"unknown method {pruning.method!r}; known methods: {', '.join(methods())}, or 'dense' "
                           "for the unpruned reference")
    models.spec(network.model)  # an unknown model is refused (with the known names) before data is loaded
    if is_environment(data.dataset):  # reinforcement learning: an agent's own loop (earlyprune.rl)
        from ..rl.experiment import run_rl_experiment

        return run_rl_experiment(config, threads=threads, device=device, board=board)
    if data.steps_per_epoch is not None:
        raise PruningError("--steps-per-epoch applies to reinforcement learning (--dataset cartpole) only: an "
                           "epoch of a dataset is one pass over its training split")
    torch.set_num_threads(config.threads)
    target = resolve_device(device)
    # started by torchrun: one shard of the data per process; nccl for GPUs, gloo for the CPU
    distributed = init_from_environment("nccl" if target.type == "cuda" else "gloo")
    shard = {"num_replicas": world_size(), "rank": rank()}
    torch.manual_seed(config.seed)
    train_split, test_split = load_dataset(data.dataset, data_dir=data_dir, cache_dir=cache_dir)
    if data.train_subset:
        train_split = train_split.subset(data.train_subset)
    task = get_task(dataset_task(train_split))
    model = models.create(network.model, width=network.width, init=network.init, **_model_kwargs(train_split))
    model.input_shape = tuple(train_split.input_shape)
    model.to(target)
    check_model_fits(model, train_split, task)  # before any epoch: labels, outputs, inputs, frozen, meta
    check_targets(test_split)
    train_loader = train_split.loader(data.batch_size, shuffle=True, augment=data.augment, seed=config.seed,
                                      **shard)
    test_loader = test_split.loader(500, shuffle=False, augment=False)
    recipe = dataclasses.replace(config.training, progress=progress)
    dense = report(model)
    record: dict[str, Any] = {"key": config.key(), **config.as_dict()}
    record.update(task=task.name, metric_name=task.metric, higher_is_better=task.higher_is_better,
                  dense_params=dense.params, dense_flops=dense.flops)
    if board is not None:
        board.settings(record)

    scoring_seconds = 0.0
    masks = None
    on_epoch_end = None
    if pruning.method != DENSE and pruning.when == "init" and not _is_during_training(config):
        scoring_data = train_split.loader(data.batch_size, shuffle=True, augment=False, seed=config.seed + 1,
                                          **shard)
        masks, scoring_seconds = prune_at_init(model, config, scoring_data, task, record, board=board,
                                               dense_params=dense.params)
    elif pruning.method != DENSE:
        from .during_training import epoch_callback

        on_epoch_end, events = epoch_callback(config, model, train_split, record, task=task)

    on_epoch_end = _counting_training_flops(on_epoch_end, model, len(train_split), record)
    trained = model
    if distributed:
        ids = [target.index] if target.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    result = train(trained, train_loader, test_loader, recipe, on_epoch_end=on_epoch_end,
                   description=run_description(pruning), task=task,
                   on_epoch_record=None if board is None else board.epoch_hook(record))
    record.update(
        finished_fields(record, model, masks, dense, result, scoring_seconds, processes=world_size()),
        final_accuracy=result.final_accuracy,
        best_accuracy=result.best_accuracy,
        curve=[{"epoch": r.epoch, "test_accuracy": r.test_accuracy, "test_metric": r.test_metric,
                "train_loss": r.train_loss, "seconds": r.seconds} for r in result.history],
    )
    return record


def is_environment(dataset: str) -> bool:
    """Whether ``dataset`` names an environment (reinforcement learning) rather than files of examples."""
    from ..data import DATASETS

    spec = DATASETS.get(dataset.lower()) if isinstance(dataset, str) else None
    return spec is not None and spec.task == "reinforcement_learning"


def with_threads(config: RunConfig, threads: int | None = None) -> RunConfig:
    """``config`` with its thread count fixed: ``config.threads`` when set (a sweep cell's), else ``threads``,
    else the count torch uses now. The count is part of the key (a setting not at its default), so runs that
    differ only in threads are two runs, as their results may differ in the last digits on the CPU."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise PruningError(f"threads must be an integer >= 1 (torch's CPU threads), got {threads!r}")
    count = config.threads or threads or torch.get_num_threads()
    return config if config.threads == count else config.replace(threads=count)


def _ablation_settings(config: RunConfig) -> dict[str, Any]:
    """``ablation`` (and for ``reinit`` the model's initialisation scheme, which it re-draws from) for
    :func:`earlyprune.prune`; nothing without an ablation."""
    ablation = config.pruning.ablation
    if ablation == "none":
        return {}
    settings: dict[str, Any] = {"ablation": ablation}
    if ablation == "reinit":
        settings["init_scheme"] = config.network.init or models.spec(config.network.model).init
    return settings


def dataset_task(split: Any) -> str:
    """The task of a dataset split: its ``task`` attribute, classification when it has none."""
    return getattr(split, "task", "classification")


def _model_kwargs(split: Any) -> dict[str, Any]:
    """What sizes the model for ``split``: an image split's classes, channels and side as before; for other
    inputs (tokens, features) the split's own ``model_kwargs()``."""
    shape = tuple(split.input_shape)
    if len(shape) == 3 and dataset_task(split) == "classification":
        return {"num_classes": split.num_classes, "in_channels": shape[0], "input_size": shape[1]}
    if hasattr(split, "model_kwargs"):
        return dict(split.model_kwargs())
    return {"num_classes": split.num_classes}


#: the device types a run can train on ("auto": CUDA when available, else the CPU)
_TRAINING_DEVICES = ("cpu", "cuda", "mps", "xpu", "auto")


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"cpu"`` -> CPU; ``"auto"`` -> CUDA if available; a bare ``"cuda"`` under torchrun -> the
    process's ``cuda:LOCAL_RANK``. Asking for CUDA where there is none, or for one ``cuda:N`` while torchrun
    runs several processes on this machine, is an error that says so."""
    import os

    name = (device or "cpu").lower() if isinstance(device, (str, type(None))) else str(device)
    if name.split(":")[0] not in _TRAINING_DEVICES:
        what = ("nothing can train on the meta device (it holds shapes, no data):" if name.startswith("meta")
                else "unknown device")
        raise DeviceError(f"{what} {device!r}: use cpu, cuda, cuda:N or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but this torch sees no CUDA device: use --device cpu")
        if name == "cuda":
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        elif int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            raise DeviceError(
                f"device {device!r} would put every torchrun process of this machine on the same GPU: "
                "use --device cuda (or auto), which gives each process cuda:LOCAL_RANK"
            )
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from error


def _counting_training_flops(callback, model, examples: int, record: dict[str, Any]):
    """Wrap ``callback`` to add each epoch's training FLOPs (3 x forward: forward + backward, at the
    effective FLOPs of the model as it was during that epoch) to ``record['training_flops']``."""
    record["training_flops"] = 0

    def on_epoch_end(epoch, model_, optimizer):
        flops = report(unwrap(model_)).effective_flops or 0
        record["training_flops"] += 3 * flops * examples
        if callback is not None:
            return callback(epoch, model_, optimizer)
        return None

    return on_epoch_end


def _is_during_training(config: RunConfig) -> bool:
    return config.pruning.method == "activation_density"


def prune_at_init(model: torch.nn.Module, config: RunConfig, scoring_data: Any, task: Any, record: dict[str, Any],
                  optimizer: torch.optim.Optimizer | None = None, board: TensorBoardLog | None = None,
                  dense_params: int = 0) -> tuple[Masks | None, float]:
    """Prune ``model`` at initialisation as ``config.pruning`` says, for every task (the supervised runs and
    the RL agent's): channels removed (to a budget if one is set) or weights masked, with every setting of
    the run (scoring batches and mode, preset, rule, collapse policy, ablation, the criterion's options).
    Writes what the prune did into ``record``; returns ``(masks or None when structured, scoring seconds)``."""
    pruning = config.pruning
    common = dict(data=scoring_data, seed=config.seed, num_batches=pruning.score_batches, task=task,
                  train=SCORE_MODES[pruning.score_mode], preset=pruning.preset, optimizer=optimizer,
                  **pruning.options)
    masks = None
    start = time.perf_counter()
    if pruning.structured:
        budget = pruning.channel_budget(config.data.batch_size)  # instead of the sparsity, when given
        result = prune_channels(model, pruning.method, None if budget else pruning.sparsity, budget=budget, **common)
        if budget:
            record["budget_reached"] = result.info["budget"]
    else:
        masks = prune(model, pruning.method, pruning.sparsity, scope=pruning.scope, iterations=pruning.iterations,
                      rule=pruning.rule, on_collapse=pruning.on_collapse, **_ablation_settings(config), **common)
        record["collapsed"] = masks.info["collapsed"]
        record["schedule"] = masks.info["schedule"]
        record["layer_density"] = {name: 1.0 - s for name, s in masks.layer_sparsity().items()}
    seconds = time.perf_counter() - start
    if board is not None:
        board.initial_prune(pruning.method, model, dense_params, None if masks is None else masks.sparsity())
    return masks, seconds


def run_description(pruning: Any) -> str:
    """How a run names itself in its progress lines: ``dense``, ``snip 0.9``, ``crop flops=0.25``."""
    if pruning.method == DENSE:
        return DENSE
    return f"{pruning.method} {pruning.budget or pruning.sparsity}"


def finished_fields(record: dict[str, Any], model: torch.nn.Module, masks: Masks | None, dense: Any, result: Any,
                    scoring_seconds: float, processes: int) -> dict[str, Any]:
    """The fields every finished run's record holds, whatever its task: the sizes reached, the final and best
    metric, the times and the software and machine it ran on. Pops ``record["mask_sparsity"]``."""
    final = report(model)
    return dict(
        # weight sparsity of the masks where there are masks, else the fraction of parameters removed
        achieved_sparsity=(masks.sparsity() if masks is not None else
                           record.pop("mask_sparsity", 1.0 - final.nonzero / max(1, dense.params))),
        params=final.params,
        nonzero_params=final.nonzero,
        flops=final.flops,
        effective_flops=final.effective_flops,
        final_metric=result.final_metric,
        best_metric=result.best_metric,
        final_metrics=dict(result.history[-1].test_metrics) if result.history else {},
        scoring_seconds=scoring_seconds + record.get("scoring_seconds", 0.0),
        train_seconds=result.seconds,
        peak_memory_mb=result.peak_memory_mb,
        # joules from the hardware's counters (RAPL, NVML) over the training, else None and "not measured"
        energy_joules=getattr(result, "energy_joules", None),
        energy_source=getattr(result, "energy_source", "not measured"),
        earlyprune_version=__version__,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        device=str(next(model.parameters()).device),
        threads=torch.get_num_threads(),
        processes=processes,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
