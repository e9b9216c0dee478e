"""Which weights are prunable: the ``weight`` of every Linear and Conv layer by default, with exclusions by
name or type, tied weights once, and weights shared with a non-prunable layer (an Embedding) left dense."""

from __future__ import annotations

from typing import Iterable

from torch import nn

#: Layer types whose ``weight`` is prunable by default.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: What to say when a model has nothing to prune.
NO_PRUNABLE = (
    "model has no prunable parameters: earlyprune prunes the weights of Linear and Conv1d/2d/3d layers; "
    "check the model and that `exclude` does not remove every layer"
)


def prunable_parameters(
    model: nn.Module,
    include_types: tuple[type[nn.Module], ...] = DEFAULT_PRUNABLE_TYPES,
    exclude: Iterable[str | type[nn.Module]] = (),
) -> dict[str, nn.Parameter]:
    """Return ``{parameter name: parameter}`` for the prunable weights of ``model``, in model order.

    By default the ``weight`` of every Linear and Conv1d/2d/3d layer is prunable, first and last layer
    included; biases, normalisation and embedding parameters are not. ``exclude`` removes layers by module
    name (exact, or a prefix followed by ``.``), by parameter name, or by module type. A weight shared by
    several layers (tied weights) appears once, under its first name; one tied to a layer that is not
    prunable (a language model's output head sharing the input Embedding's weight) is not prunable.
    """
    excluded_names = {e for e in exclude if isinstance(e, str)}
    excluded_types = tuple(e for e in exclude if isinstance(e, type))
    # Weights owned by a module of another kind (Embedding, norms) stay dense even where a Linear shares them.
    seen: set[int] = {id(m.weight) for m in model.modules()
                      if not isinstance(m, include_types) and isinstance(getattr(m, "weight", None), nn.Parameter)}
    found: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, include_types) or (excluded_types and isinstance(module, excluded_types)):
            continue
        if _is_excluded(module_name, excluded_names):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        name = f"{module_name}.weight" if module_name else "weight"
        if name in excluded_names:
            continue
        seen.add(id(weight))
        found[name] = weight
    # Names must be those of named_parameters() (first occurrence of a tied weight).
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {canonical.get(id(p), n): p for n, p in found.items()}


def _is_excluded(module_name: str, excluded: set[str]) -> bool:
    return any(module_name == e or module_name.startswith(e + ".") for e in excluded)
