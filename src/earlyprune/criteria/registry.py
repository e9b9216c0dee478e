"""The criteria known by name: the built-in ones (registered by :mod:`earlyprune.criteria`) and any a user
registers. ``earlyprune.prune(model, "snip", ...)`` looks names up here; a :class:`Criterion` object can
also be passed directly, registered or not."""

from __future__ import annotations

from ..errors import PruningError
from .spec import Criterion

_REGISTERED: dict[str, Criterion] = {}

#: Methods that are not a criterion scored in one call: they are named here so that a lookup can say
#: where they live instead of "unknown".
ELSEWHERE = {
    "activation_density": (
        "activation_density prunes during training, not in one call: use earlyprune.ActivationDensityPruner "
        "in the training loop (or `earlyprune run --method activation_density`)"
    ),
}


def register(criterion: Criterion, *, replace: bool = False) -> Criterion:
    """Make ``criterion`` known by its name (to ``earlyprune.methods()``, the CLI and sweeps); returns it.

    A name that is taken is refused unless ``replace=True``.
    """
    if not isinstance(criterion, Criterion):
        raise PruningError(f"only a Criterion can be registered, got {type(criterion).__name__}")
    if criterion.name in ELSEWHERE or (criterion.name in _REGISTERED and not replace
                                       and _REGISTERED[criterion.name] is not criterion):
        raise PruningError(f"a method named {criterion.name!r} is already registered; pass replace=True "
                           "to replace it, or choose another name")
    _REGISTERED[criterion.name] = criterion
    return criterion


def unregister(name: str) -> None:
    """Forget the criterion called ``name`` (a no-op when there is none)."""
    _REGISTERED.pop(name, None)


def registered() -> dict[str, Criterion]:
    """Every registered criterion by name, in registration order."""
    return dict(_REGISTERED)


def resolve(method: str | Criterion) -> Criterion:
    """The criterion ``method`` names (or ``method`` itself), or a clear error listing the known ones."""
    if isinstance(method, Criterion):
        return method
    if isinstance(method, str):
        name = method.lower()
        if name in _REGISTERED:
            return _REGISTERED[name]
        if name in ELSEWHERE:
            raise PruningError(ELSEWHERE[name])
    known = ", ".join([*_REGISTERED, *ELSEWHERE])
    raise PruningError(f"unknown method {method!r}; known methods: {known} (or pass a Criterion object)")
