"""The binding of :class:`~earlyprune.masks.Masks` to a module: pruned weights stay exactly zero.

Applying masks never changes the model's structure or its ``state_dict`` keys (no ``weight_orig`` /
``weight_mask`` re-parametrisation, no buffers): the pruned entries are set to zero in place and kept at
zero by

* a gradient hook on each masked parameter, which zeroes the gradient of pruned entries, so SGD (with
  momentum, weight decay, nesterov), Adam and AdamW never move them (their update of a zero weight with a
  zero gradient and zero state is exactly zero);
* a forward pre-hook on the model, which re-zeroes a masked weight whenever it was changed in place since
  the last forward pass (its autograd version counter moved: an optimizer step, ``load_state_dict``), and
  puts the gradient hook on any parameter that lacks it;
* optionally (:meth:`MaskBinding.attach`) the pruned entries of the optimizer's state are zeroed and the
  weights re-masked after every ``optimizer.step()``: needed when pruning mid-training, where momentum
  accumulated before the prune would otherwise move pruned weights, and a guarantee for any optimizer.

Everything the binding needs is kept on the model itself (one attribute plus the pre-hook, a module-level
function), not in a registry of this library, so ``copy.deepcopy(model)``, ``model.to(device)`` and
pickling a model (DDP's spawn, ``torch.save(model)``) give models that are kept pruned as well, and masks
applied to two models keep both pruned. A copy's gradient hooks are put on its own parameters on its first
forward pass. Tied (shared) weights are one parameter and therefore get one mask.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from .errors import PruningError

if TYPE_CHECKING:  # masks.py applies its masks through this module; nothing here needs it at run time
    from .masks import Masks

_ATTRIBUTE = "_earlyprune_masking"


class _BindingState:
    """What a bound model carries: its masks, per-device copies, the version of each weight when it was
    last masked, and which parameter objects carry the gradient hook. Copies and unpickled models start
    with empty caches (and so re-mask and re-hook on their first forward pass)."""

    def __init__(self, masks: "Masks", hook_id: int):
        self.masks = masks
        self.hook_id = hook_id
        self._reset()

    def _reset(self) -> None:
        self.on_device: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self.versions: dict[str, int] = {}
        self.hooked: dict[str, weakref.ref] = {}
        self.handles: list[Any] = []
        self.optimizers: list[weakref.ref] = []

    def __deepcopy__(self, memo: dict) -> "_BindingState":
        return _BindingState(self.masks, self.hook_id)

    def __getstate__(self) -> dict[str, Any]:
        return {"masks": self.masks, "hook_id": self.hook_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.masks, self.hook_id = state["masks"], state["hook_id"]
        self._reset()

    def mask_on(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The mask of ``name`` on ``like``'s device in ``like``'s dtype (a multiply without a cast each time)."""
        key = (name, like.device, like.dtype)
        mask = self.on_device.get(key)
        if mask is None:
            mask = self.on_device[key] = self.masks[name].to(device=like.device, dtype=like.dtype)
        return mask

    def enforce(self, model: nn.Module, force: bool = False, grads: bool = False) -> None:
        """Hook every masked parameter that lacks the gradient hook; re-zero every one changed in place."""
        for name in self.masks:
            param = _lookup(model, name)
            if not isinstance(param, nn.Parameter):
                continue  # a tensor swapped in by torch.func.functional_call: not the model's own weight
            ref = self.hooked.get(name)
            if ref is None or ref() is not param:
                self.handles.append(param.register_hook(_GradientMask(self, name)))
                self.hooked[name] = weakref.ref(param)
            if force or self.versions.get(name) != param._version:
                with torch.no_grad():
                    param.mul_(self.mask_on(name, param))
                    if grads and param.grad is not None:
                        param.grad.mul_(self.mask_on(name, param.grad))
                self.versions[name] = param._version

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self._reset()


class _GradientMask:
    """Gradient hook: zero the gradient of pruned entries (a no-op once the binding is removed)."""

    def __init__(self, state: _BindingState, name: str):
        self.state = weakref.ref(state)
        self.name = name

    def __call__(self, grad: torch.Tensor) -> torch.Tensor | None:
        state = self.state()
        if state is None or self.name not in state.masks:
            return None
        return grad * state.mask_on(self.name, grad)


def _lookup(model: nn.Module, name: str) -> Any:
    """The tensor the model holds under parameter name ``name`` now (under ``torch.func.functional_call``
    it may be a plain tensor standing in for the parameter)."""
    prefix, _, attribute = name.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    return getattr(module, attribute, None)


def _enforce_masks(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a bound model (module-level, so copies and pickles of the model keep it)."""
    state = module.__dict__.get(_ATTRIBUTE)
    if state is not None:
        state.enforce(module)


class MaskBinding:
    """Masks applied to one model: ``attach`` an optimizer, ``reapply``, ``remove``, or ``reindex`` after
    structured surgery. A handle only: the state lives on the model (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise PruningError("the model these masks were applied to no longer exists")
        return model

    @property
    def masks(self) -> "Masks":
        """The masks applied to the model."""
        return self._state().masks

    def _state(self) -> _BindingState:
        state = self.model.__dict__.get(_ATTRIBUTE)
        if state is None:
            raise PruningError("the masks are no longer applied to this model (the binding was removed)")
        return state

    @property
    def active(self) -> bool:
        """Whether the masks are still applied to the model."""
        model = self._model()
        return model is not None and _ATTRIBUTE in model.__dict__

    def attach(self, optimizer: torch.optim.Optimizer) -> "MaskBinding":
        """Zero pruned entries of ``optimizer``'s state now and re-mask the weights after every step.

        Use this when masks are applied to a model that has already trained (momentum or Adam moments of
        pruned weights would otherwise move them), or with an optimizer whose update of a zero weight
        with zero gradient is not zero.
        """
        state, model = self._state(), self.model
        by_id = {id(model.get_parameter(n)): n for n in state.masks}
        held = False
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    name = by_id.get(id(p))
                    if name is None:
                        continue
                    held = True
                    for value in optimizer.state.get(p, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == p.shape:
                            value.mul_(state.mask_on(name, value))
        if not held:
            raise PruningError(
                "the optimizer holds none of the masked parameters: was it made for another model (or for this "
                "one before a structured prune replaced its parameters)?"
            )
        model_ref = self._model

        def remask(*_: Any) -> None:
            model = model_ref()
            current = None if model is None else model.__dict__.get(_ATTRIBUTE)
            if current is not None:
                current.enforce(model, force=True)

        state.handles.append(optimizer.register_step_post_hook(remask))
        state.optimizers.append(weakref.ref(optimizer))
        return self

    def reapply(self) -> None:
        """Set the pruned weights (and their gradients) of the model to zero again."""
        self._state().enforce(self.model, force=True, grads=True)

    def remove(self) -> None:
        """Stop keeping the pruned weights at zero; the weights stay as they are now."""
        model = self._model()
        if model is None:
            return
        unbind(model)

    def reindex(self, kept_indices: Mapping[str, Mapping[int, torch.Tensor]]) -> "MaskBinding":
        """Slice the masks after structured surgery (``{param: {dim: kept indices}}``) and bind them to the
        model's new parameters, keeping the attached optimizers attached."""
        state, model = self._state(), self.model
        optimizers = [ref() for ref in state.optimizers if ref() is not None]
        binding = bind(model, state.masks.slice(kept_indices))
        for optimizer in optimizers:
            try:
                binding.attach(optimizer)
            except PruningError:
                pass  # it still holds the parameters from before the surgery: it was not given to shrink
        return binding


def bind(model: nn.Module, masks: "Masks", optimizer: torch.optim.Optimizer | None = None) -> MaskBinding:
    """Apply ``masks`` to ``model`` (replacing masks applied before) and return the binding."""
    masks.check_against(model)
    unbind(model)
    handle = model.register_forward_pre_hook(_enforce_masks)
    state = _BindingState(masks, handle.id)
    model.__dict__[_ATTRIBUTE] = state
    state.enforce(model, force=True, grads=True)
    binding = MaskBinding(model)
    if optimizer is not None:
        binding.attach(optimizer)
    return binding


def unbind(model: nn.Module) -> None:
    """Remove the masks applied to ``model``, if any (its weights stay as they are)."""
    state = model.__dict__.pop(_ATTRIBUTE, None)
    if state is None:
        return
    state.release()
    model._forward_pre_hooks.pop(state.hook_id, None)


def applied_masks(model: nn.Module) -> "Masks | None":
    """The :class:`Masks` applied to ``model`` (and not removed since), or None."""
    state = model.__dict__.get(_ATTRIBUTE)
    return None if state is None else state.masks


def binding(model: nn.Module) -> MaskBinding | None:
    """The binding of the masks applied to ``model``, or None."""
    return MaskBinding(model) if _ATTRIBUTE in model.__dict__ else None
