"""earlyprune: pruning neural networks before and early in training.

The public API (see the README)::

    import earlyprune as ep
    scores = ep.score(model, "grasp", batches)                       # {param name: tensor}, higher = keep
    masks = ep.prune(model, "snip", sparsity=0.98, data=loader)      # applies; returns ep.Masks
    result = ep.prune_channels(model, "crop", sparsity=0.5, data=loader)  # channels removed; result.model
    ep.report(model)                                                 # params, non-zero, FLOPs per layer
    ep.methods()                                                     # every method with its paper
    ep.tune_cpu_allocator()   # glibc's malloc keeps freed blocks: ProsPr/GraSP scoring on a CPU much faster
    pruner = ep.EarlyPruner(model, "crop", sparsity=0.98, data=loader, optimizer=opt)  # pruner.step() per epoch
    resizer = ep.ActivationDensityPruner(model, example_inputs, optimizer=opt)       # resizer.epoch_end()

A criterion of one's own is an :class:`ep.Criterion` passed as ``method`` (see docs/extending.md). The loss
criteria score with is the task's: ``task="classification"`` (default), ``"regression"``,
``"language_modelling"`` or an ``ep.tasks.Task`` (see :mod:`earlyprune.tasks`).
"""

from . import data, distributed, models, tasks
from .allocator import tune_cpu_allocator
from .activation_density import ActivationDensityPruner
from .criteria import Criterion
from .early import EarlyPruner
from .errors import LayerCollapseError, PruningError
from .masks import Masks
from .metrics import report
from .pruning import methods, prune, score
from .structured import prune_channels

__version__ = "0.1.0"

__all__ = [
    "models", "data", "tasks", "Criterion", "EarlyPruner", "ActivationDensityPruner", "Masks", "prune", "prune_channels",
    "score", "report", "methods", "tune_cpu_allocator", "PruningError", "LayerCollapseError", "__version__",
]
