"""earlyprune: pruning neural networks before and early in training.

The public API (see the README and DESIGN notes)::

    import earlyprune as ep
    scores = ep.score(model, "grasp", batches)                       # {param name: tensor}, higher = keep
    masks = ep.prune(model, "snip", sparsity=0.98, data=loader)      # applies; returns ep.Masks
    ep.report(model)                                                 # params, non-zero, FLOPs per layer
    ep.methods()                                                     # every method with its paper
    pruner = ep.EarlyPruner(model, "crop", sparsity=0.98, data=loader, optimizer=opt)  # pruner.step() per epoch
    resizer = ep.ActivationDensityPruner(model, example_inputs, optimizer=opt)       # resizer.epoch_end()
"""

from . import data, distributed, models
from .activation_density import ActivationDensityPruner
from .early import EarlyPruner
from .errors import LayerCollapseError, PruningError
from .masks import Masks
from .metrics import report
from .pruning import methods, prune, score

__version__ = "0.1.0"

__all__ = ["models", "data", "EarlyPruner", "ActivationDensityPruner", "Masks", "prune", "score", "report", "methods", "PruningError", "LayerCollapseError", "__version__"]
