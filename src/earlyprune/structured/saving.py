"""Saving a structurally pruned (shrunk) model so that it reloads safely, without unpickling code.

A shrunk model's ``state_dict`` has narrower shapes than the model its class builds, so
``load_state_dict`` into a fresh instance fails, and ``torch.save(model)`` pickles the module (which
``torch.load(..., weights_only=True)`` rightly refuses). :func:`save_shrunk` writes a file of tensors and
plain data only:

* ``state_dict``: every parameter and buffer at its shrunk shape;
* ``attributes``: per module, its public integer attributes (``out_channels``, ``in_features``,
  ``num_features``, ``hidden_size``, ``num_attention_heads``, ``all_head_size``, ``groups``,
  ``normalized_shape`` ...), which is where torch's layers (and Hugging Face attention) keep their widths;
* ``create``: for the library's reference models, the arguments of :func:`earlyprune.models.create` that
  built the model at full width, so :func:`load_shrunk` can rebuild it by itself;
* ``widths``: the output width of every Conv/Linear/recurrent layer (for reading; not needed to load).

The protocol for a model class of your own (:func:`load_shrunk` with ``model=``): build the model as it was
built before pruning (same constructor arguments); every parameter and buffer is then replaced by the saved
tensor ("sliced on load": the shrunk shape and values), every module's integer attributes are set to the
saved ones, recurrent layers refresh their flat weights, and ``load_state_dict(strict=True)`` checks the
result. This works for models whose layer sizes live in their tensors and in integer attributes of their
modules (all of ``torch.nn``; the reference models; Hugging Face models, whose config is not changed by
surgery). A model that sizes its forward pass from something else (a width kept in a list, a config
object that surgery changed) must be rebuilt by its own code at the saved ``widths``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import PruningError
from ..safe_load import load_plain
from .surgery import layer_widths

FORMAT = "earlyprune.shrunk/1"


def _plain_int(value: Any) -> bool:
    if isinstance(value, int):  # bool included
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(v, int) for v in value)


def _attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Public integer (and integer-tuple) attributes of every module (``training`` left out)."""
    out = {}
    for name, module in model.named_modules():
        values = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in vars(module).items()
                  if not k.startswith("_") and k != "training" and _plain_int(v)}
        if values:
            out[name] = values
    return out


def shrunk_state(model: nn.Module, create: Mapping[str, Any] | None = None,
                 info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`save_shrunk` writes, as a dict of tensors and builtins (``torch.save`` it anywhere).

    ``create``: the :func:`earlyprune.models.create` arguments of the full-width model; default the ones
    ``create`` recorded on the model (``model.create_arguments``), if any.
    """
    if create is None:
        create = getattr(model, "create_arguments", None)
    from ..masks import _plain

    return {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "attributes": _attributes(model),
        "widths": layer_widths(model),
        "create": _plain(dict(create)) if create is not None else None,
        "info": _plain(dict(info or {})),
    }


def save_shrunk(model: nn.Module, path: str | os.PathLike[str], create: Mapping[str, Any] | None = None,
                info: Mapping[str, Any] | None = None) -> None:
    """Write the shrunk ``model`` to ``path`` atomically, loadable with ``torch.load(..., weights_only=True)``
    and rebuilt by :func:`load_shrunk` (see the module docstring)."""
    state = shrunk_state(model, create=create, info=info)
    atomic_write(path, lambda f: torch.save(state, f))


def read_shrunk(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """The checked contents of a file written by :func:`save_shrunk` (read with ``weights_only=True``)."""
    state = load_plain(source, "a shrunk model")
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise PruningError(f"not an earlyprune shrunk-model file (expected format {FORMAT!r}); a plain state_dict "
                           "loads with model.load_state_dict")
    if not isinstance(state.get("state_dict"), Mapping) or not isinstance(state.get("attributes"), Mapping):
        raise PruningError("shrunk-model file is malformed: it needs 'state_dict' and 'attributes'")
    return dict(state)


def load_shrunk(source: str | os.PathLike[str] | Mapping[str, Any], model: nn.Module | None = None) -> nn.Module:
    """The shrunk model saved by :func:`save_shrunk`: ``model`` (your class, built at full width as before
    pruning) resized to the saved shapes and loaded, or, without ``model``, the reference model rebuilt
    with :func:`earlyprune.models.create` from the recorded arguments. Returned in eval mode on the CPU."""
    state = read_shrunk(source)
    if model is None:
        create = state.get("create")
        if not create:
            raise PruningError("this file records no earlyprune.models.create arguments (the model was not made by "
                               "models.create): build your model as before pruning and pass it, load_shrunk(path, model)")
        from .. import models

        arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in create.items()}
        model = models.create(arguments.pop("name"), **arguments)
    _resize_to(model, state["state_dict"], state["attributes"])
    return model.eval()


def _resize_to(model: nn.Module, tensors: Mapping[str, torch.Tensor], attributes: Mapping[str, Any]) -> None:
    modules = dict(model.named_modules())
    unknown = sorted(set(attributes) - set(modules))
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if unknown or missing or unexpected:
        raise PruningError(
            "the saved model and the given one differ in structure (not only in widths): "
            f"modules not in the given model {unknown[:4]}, tensors missing from the file {missing[:4]}, tensors "
            f"the given model lacks {unexpected[:4]}; build the model with the same class and arguments as before "
            "pruning"
        )
    for name, value in tensors.items():
        prefix, _, attribute = name.rpartition(".")
        module = modules[prefix]
        current = getattr(module, attribute)
        if tuple(current.shape) == tuple(value.shape):
            continue
        if isinstance(current, nn.Parameter):
            setattr(module, attribute, nn.Parameter(torch.empty_like(value, dtype=current.dtype),
                                                    requires_grad=current.requires_grad))
        else:
            module._buffers[attribute] = torch.empty_like(value, dtype=current.dtype)
    for name, values in attributes.items():
        module = modules[name]
        for attribute, value in values.items():
            current = getattr(module, attribute, None)
            if isinstance(value, list):  # saved as a list: give it back the type it has on the module
                value = type(current)(value) if isinstance(current, (tuple, list)) else tuple(value)
            if current != value:
                setattr(module, attribute, value)
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()  # its flat weight list still points at the full-width tensors
    model.load_state_dict(tensors, strict=True)
