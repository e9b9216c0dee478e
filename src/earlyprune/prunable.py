"""Which weights are prunable.

By default: the ``weight`` of every Linear and Conv1d/2d/3d layer (a MultiheadAttention's ``out_proj``
included), the input and recurrent weights of LSTM/GRU/RNN layers (``weight_ih_l*``, ``weight_hh_l*``,
``weight_hr_l*``; not their biases), a MultiheadAttention's input projections (``in_proj_weight`` or
``q/k/v_proj_weight``), and GPT-2's ``Conv1D`` (recognised without importing ``transformers``: a module
named ``Conv1D``, or one with a 2-D ``weight`` Parameter and an ``nf`` attribute). Embeddings and other
layers are prunable only when asked for (``include=``). Exclusions go by name or type; tied weights
count once; a weight shared with a layer that is not prunable (an Embedding) stays dense.
"""

from __future__ import annotations

import warnings
from typing import Iterable

from torch import nn

from .torch_prune import refuse_torch_pruned

#: Layer types whose ``weight`` is prunable by default (the layers with a dense matrix product).
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Recurrent layers whose ``weight_*`` matrices are prunable by default.
RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase,)

_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

#: Below this fraction of all parameters being prunable, :func:`prunable_parameters` warns.
COVERAGE_WARNING = 0.5

#: What to say when a model has nothing to prune.
NO_PRUNABLE = (
    "model has no prunable parameters: earlyprune prunes the weights of Linear, Conv1d/2d/3d, LSTM/GRU/RNN, "
    "MultiheadAttention and GPT-2 Conv1D layers (more with include=[...]); check the model and that `exclude` "
    "does not remove every layer"
)


def is_conv1d_like(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D`` (a Linear with its weight stored as (in, out)), by
    duck typing: its class is named ``Conv1D``, or it has a 2-D ``weight`` Parameter and an ``nf``
    attribute. ``transformers`` is not imported."""
    weight = module._parameters.get("weight")
    if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
        return False
    return type(module).__name__ == "Conv1D" or hasattr(module, "nf")


def default_weight_names(module: nn.Module) -> list[str]:
    """The names (in ``module._parameters``) of the weights of ``module`` that are prunable by default."""
    own = module._parameters
    if isinstance(module, DEFAULT_PRUNABLE_TYPES) or is_conv1d_like(module):
        names = ["weight"]
    elif isinstance(module, RECURRENT_TYPES):
        names = [n for n in own if n.startswith("weight_")]
    elif isinstance(module, nn.MultiheadAttention):
        names = list(_MHA_WEIGHTS)
    else:
        names = []
    return [n for n in names if isinstance(own.get(n), nn.Parameter)]


def _included_weight_names(module: nn.Module) -> list[str]:
    """The weights of a module whose type the caller included: its default ones, else its ``weight``."""
    names = default_weight_names(module)
    if names:
        return names
    return ["weight"] if isinstance(module._parameters.get("weight"), nn.Parameter) else []


def prunable_parameters(
    model: nn.Module,
    include_types: tuple[type[nn.Module], ...] = (),
    exclude: Iterable[str | type[nn.Module]] = (),
    include: Iterable[str | type[nn.Module]] = (),
    warn: bool = True,
) -> dict[str, nn.Parameter]:
    """Return ``{parameter name: parameter}`` for the prunable weights of ``model``, in model order.

    Prunable by default (first and last layer included): the ``weight`` of every Linear (also a
    MultiheadAttention's ``out_proj``, which MultiheadAttention uses without calling it) and Conv1d/2d/3d
    layer; the ``weight_ih_l*``/``weight_hh_l*`` (and ``weight_hr_l*``) matrices of LSTM, GRU and RNN
    layers; a MultiheadAttention's ``in_proj_weight`` (or ``q_proj_weight``/``k_proj_weight``/
    ``v_proj_weight``); the ``weight`` of GPT-2's ``Conv1D`` (see :func:`is_conv1d_like`). Biases,
    normalisation and embedding parameters are not.

    ``include`` adds more: module types (all their weights: an ``nn.Embedding``'s ``weight``, or the
    ``weight`` of a layer type of your own), module names (that module's weights) and exact parameter names
    (``"pos_embed"``, ``"blocks.0.ls1.gamma"``); ``include_types`` is the older form of module types only.
    ``exclude`` removes layers by module name (exact, or a prefix followed by ``.``), by parameter name, or
    by module type, and wins over ``include``.

    A weight shared by several layers (tied weights) appears once, under its first name; one tied to a layer
    that is not prunable (a language model's output head sharing the input Embedding's weight) is not
    prunable unless that layer is included. With ``warn``, a model whose prunable weights are under half of
    its parameters gets a warning naming the largest parameters left out and how to include them.
    """
    refuse_torch_pruned(model)  # its weights are not Parameters: it would look as if it had no prunable layers
    include = list(include) + list(include_types)
    included_types = tuple(e for e in include if isinstance(e, type))
    included_names = {e for e in include if isinstance(e, str)}
    bad = [e for e in include if not isinstance(e, (str, type))]
    if bad:
        from .errors import PruningError

        raise PruningError(f"include takes module types, module names or parameter names, got {bad[:3]}")
    excluded_names = {e for e in exclude if isinstance(e, str)}
    excluded_types = tuple(e for e in exclude if isinstance(e, type))
    modules = list(model.named_modules())
    _check_included_names(model, modules, included_names)

    def chosen(module_name: str, module: nn.Module) -> list[str]:
        if excluded_types and isinstance(module, excluded_types):
            return []
        if _is_excluded(module_name, excluded_names):
            return []
        names = default_weight_names(module)
        if (included_types and isinstance(module, included_types)) or module_name in included_names:
            names = names or _included_weight_names(module)
        prefix = f"{module_name}." if module_name else ""
        extra = [n for n, p in module._parameters.items()
                 if p is not None and prefix + n in included_names and n not in names]
        return [n for n in names + extra if prefix + n not in excluded_names]

    selected = {name: chosen(name, module) for name, module in modules}
    # Weights owned by a module that does not prune them (Embedding, norms) stay dense even where a
    # prunable layer shares them (exclusion does not count: an excluded Linear's tied twin stays prunable).
    seen: set[int] = set()
    for name, module in modules:
        kinds = default_weight_names(module)
        if (included_types and isinstance(module, included_types)) or name in included_names:
            kinds = kinds or _included_weight_names(module)
        weight = module._parameters.get("weight")
        if isinstance(weight, nn.Parameter) and "weight" not in kinds and (
                f"{name}.weight" if name else "weight") not in included_names:
            seen.add(id(weight))
    found: dict[str, nn.Parameter] = {}
    for module_name, module in modules:
        for attr in selected[module_name]:
            weight = module._parameters.get(attr)
            if not isinstance(weight, nn.Parameter) or id(weight) in seen:
                continue
            seen.add(id(weight))
            found[f"{module_name}.{attr}" if module_name else attr] = weight
    # Names must be those of named_parameters() (first occurrence of a tied weight).
    canonical = {id(p): n for n, p in model.named_parameters()}
    result = {canonical.get(id(p), n): p for n, p in found.items()}
    if warn and result:
        # What the caller excluded was a choice: it does not count as left out.
        chosen_out = {id(p) for name, module in modules
                      if (excluded_types and isinstance(module, excluded_types)) or _is_excluded(name, excluded_names)
                      for p in module.parameters(recurse=False)}
        chosen_out |= {id(p) for n, p in model.named_parameters() if n in excluded_names}
        _warn_low_coverage(model, result, chosen_out)
    return result


def _check_included_names(model: nn.Module, modules: list[tuple[str, nn.Module]], names: set[str]) -> None:
    if not names:
        return
    known = {n for n, _ in modules} | {n for n, _ in model.named_parameters(remove_duplicate=False)}
    unknown = sorted(names - known)
    if unknown:
        from .errors import PruningError

        raise PruningError(f"include names {unknown[:5]}, which are neither modules nor parameters of the model")


def _warn_low_coverage(model: nn.Module, prunable: dict[str, nn.Parameter], excluded: set[int]) -> None:
    unique = {id(p): (n, p) for n, p in model.named_parameters() if id(p) not in excluded}
    total = sum(p.numel() for _, p in unique.values())
    covered = sum(p.numel() for p in prunable.values())
    if not total or covered >= COVERAGE_WARNING * total:
        return
    chosen = {id(p) for p in prunable.values()}
    left = sorted(((p.numel(), n) for i, (n, p) in unique.items() if i not in chosen), reverse=True)[:3]
    owners = dict(model.named_modules())
    described = []
    for count, name in left:
        owner = owners.get(name.rpartition(".")[0]) if "." in name else model
        described.append(f"{name} ({type(owner).__name__}, {count:,})")
    warnings.warn(
        f"only {covered / total:.1%} of the model's {total:,} parameters are prunable; the largest left dense: "
        f"{', '.join(described)}. Sparsity is counted over the prunable weights only; to prune more, pass "
        f"include=[...] with module types (e.g. torch.nn.Embedding) or parameter names (e.g. {left[0][1]!r})",
        UserWarning, stacklevel=3,
    )


def _is_excluded(module_name: str, excluded: set[str]) -> bool:
    return any(module_name == e or module_name.startswith(e + ".") for e in excluded)
