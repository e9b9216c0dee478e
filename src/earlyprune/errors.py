"""Exceptions raised by earlyprune. All are ValueError subclasses so callers can catch bad input broadly."""


class PruningError(ValueError):
    """Bad input or an impossible request to prune (wrong sparsity, mismatched masks, NaN scores, ...)."""


class LayerCollapseError(PruningError):
    """A layer would be pruned to nothing, which cuts the network (raised when the caller asks for it)."""


class DeviceError(PruningError, RuntimeError):
    """A device that this torch cannot use, or one that torchrun's processes would share (also a
    RuntimeError, as torch's own device errors are)."""
