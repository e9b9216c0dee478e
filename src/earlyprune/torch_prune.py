"""Masks to and from PyTorch's own pruning: ``torch.nn.utils.prune`` and ``torch.ao.pruning``.

``torch.nn.utils.prune`` re-parametrises a pruned tensor ``weight`` as a Parameter ``weight_orig``, a buffer
``weight_mask`` and a forward pre-hook computing ``weight = weight_orig * weight_mask``, so ``weight`` is no
longer a Parameter. ``torch.ao.pruning``'s sparsifiers put a ``FakeSparsity`` parametrization (holding a
``mask``) on ``weight`` through ``torch.nn.utils.parametrize``. earlyprune keeps the model plain instead
(its masks are applied in place, see :mod:`earlyprune.masking`), so a model in either form is converted:

* :func:`masks_from_torch` reads every such mask under the plain parameter name (``"features.0.weight"``)
  and makes the model plain (``prune.remove`` / ``parametrize.remove_parametrizations``: ``weight`` is a
  Parameter again holding ``orig * mask``); ``Masks.from_torch_prune(model)`` is this as a
  :class:`~earlyprune.Masks`;
* :func:`to_torch_prune` puts masks on a model in ``torch.nn.utils.prune``'s form
  (``prune.custom_from_mask``), for code that expects ``weight_orig``/``weight_mask`` (Lightning's
  ``ModelPruning``, ``prune.remove``);
* :func:`refuse_torch_pruned` is the clear error the library gives a model still in either form.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from .errors import PruningError


def _torch_prune_hooks(module: nn.Module) -> list[prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def _sparsity_parametrizations(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{tensor name: mask}`` of ``torch.ao.pruning`` parametrizations (those holding a ``mask``)."""
    found = {}
    if not parametrize.is_parametrized(module):
        return found
    for name, chain in module.parametrizations.items():
        masks = [p.mask for p in chain if isinstance(getattr(p, "mask", None), torch.Tensor)]
        if masks:
            mask = masks[0].bool()
            for other in masks[1:]:
                mask = mask & other.bool()
            found[name] = mask
    return found


def pruned_by_torch(model: nn.Module) -> list[str]:
    """Names (``"layer.weight"``) of the tensors of ``model`` pruned by ``torch.nn.utils.prune`` or
    ``torch.ao.pruning`` and not made plain again."""
    names = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        names.extend(prefix + hook._tensor_name for hook in _torch_prune_hooks(module))
        names.extend(prefix + name for name in _sparsity_parametrizations(module))
    return list(dict.fromkeys(names))


def refuse_torch_pruned(model: nn.Module) -> None:
    """Raise a clear :class:`PruningError` if ``model`` is in torch's pruned form (its ``weight`` is then not
    a Parameter, so it would look to earlyprune as if it had no prunable layers)."""
    names = pruned_by_torch(model)
    if names:
        shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
        raise PruningError(
            f"the model was pruned with torch.nn.utils.prune or torch.ao.pruning ({shown} re-parametrised, e.g. as "
            "weight_orig and weight_mask): convert it first with masks = earlyprune.Masks.from_torch_prune(model), "
            "which makes it plain and returns its masks (masks.apply(model) keeps them), then prune again"
        )


def masks_from_torch(model: nn.Module, remove: bool = True) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` of every tensor pruned by ``torch.nn.utils.prune`` (its ``*_mask``
    buffer: the product of all its pruning methods) or ``torch.ao.pruning`` (its ``FakeSparsity`` masks).

    With ``remove`` (default) the model is made plain: each pruned tensor becomes a Parameter again, equal
    to the original times the mask (the same values the model computed with). Raises if nothing is pruned.
    """
    masks: dict[str, torch.Tensor] = {}
    for module_name, module in list(model.named_modules()):
        prefix = f"{module_name}." if module_name else ""
        for hook in _torch_prune_hooks(module):
            name = hook._tensor_name
            masks[prefix + name] = getattr(module, name + "_mask").detach().bool().clone()
            if remove:
                prune.remove(module, name)
        for name, mask in _sparsity_parametrizations(module).items():
            masks[prefix + name] = mask.detach().clone()
            if remove:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)  # weight = orig*mask
    if not masks:
        raise PruningError("the model has no tensor pruned by torch.nn.utils.prune or torch.ao.pruning (no "
                           "weight_orig/weight_mask pair, no FakeSparsity parametrization)")
    return masks


def to_torch_prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Put ``masks`` (``{parameter name: mask}``) on ``model`` in ``torch.nn.utils.prune``'s form: each named
    parameter becomes ``<name>_orig`` with a ``<name>_mask`` buffer (``prune.custom_from_mask``). Masks that
    earlyprune applied to ``model`` are removed first (the two would fight over ``weight``)."""
    from .masking import unbind

    named = dict(model.named_parameters())
    missing = [n for n in masks if n not in named]
    if missing:
        raise PruningError(f"masks name parameters the model does not have: {missing[:5]}")
    wrong = [n for n, m in masks.items() if tuple(m.shape) != tuple(named[n].shape)]
    if wrong:
        raise PruningError(f"mask shapes do not match the model's parameters: {wrong[:5]}")
    unbind(model)
    for name, mask in masks.items():
        prefix, _, attribute = name.rpartition(".")
        module = model.get_submodule(prefix) if prefix else model
        prune.custom_from_mask(module, attribute, mask.to(device=named[name].device, dtype=named[name].dtype))
    return model
