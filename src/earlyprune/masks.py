"""Unstructured weight masks: which weights are prunable, applying masks, keeping them at zero, persisting.

A :class:`Masks` maps parameter names (as in ``model.named_parameters()``) to boolean tensors of the
parameter's shape, ``True`` = keep. Applying masks never changes the model's structure or its
``state_dict`` keys (no ``weight_orig``/``weight_mask`` re-parametrisation): the pruned entries are set to
zero in place and kept at zero by

* a gradient hook on each masked parameter, which zeroes the gradient of pruned entries, so SGD (with
  momentum, weight decay, nesterov), Adam and AdamW never move them (their update of a zero weight with a
  zero gradient and zero state is exactly zero), and
* optionally (``attach(optimizer)``) the pruned entries of the optimizer's state are zeroed and the
  weights are re-masked after every ``optimizer.step()``: needed when pruning mid-training, where momentum
  accumulated before the prune would otherwise move pruned weights, and a guarantee for any optimizer.

Tied (shared) weights are one parameter and therefore get one mask.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from .atomic import atomic_write
from .errors import PruningError

#: Layer types whose ``weight`` is prunable by default.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_FORMAT = "earlyprune.masks/1"

# The masks currently applied to each model, so scoring and reports see them without being told.
_APPLIED: "weakref.WeakKeyDictionary[nn.Module, Masks]" = weakref.WeakKeyDictionary()


def applied_masks(model: nn.Module) -> "Masks | None":
    """The :class:`Masks` last applied to ``model`` (and not detached since), or None."""
    return _APPLIED.get(model)


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


@dataclass(frozen=True)
class LayerStats:
    """Kept/total counts of one masked parameter."""

    name: str
    total: int
    kept: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0


class Masks(Mapping[str, torch.Tensor]):
    """Boolean keep-masks for named parameters; a read-only mapping ``name -> BoolTensor``.

    Create with ``Masks(masks)`` or :meth:`Masks.ones`, then :meth:`apply` to a model. Persist with
    :meth:`state_dict` / :meth:`save` and restore with :meth:`Masks.load`.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], info: Mapping[str, Any] | None = None):
        checked: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask for {name!r} must be a tensor, got {type(mask).__name__}")
            checked[name] = mask.detach().to(torch.bool)
        self._masks = checked
        #: Free-form record of how the masks were made (method, sparsity, collapsed layers, ...).
        self.info: dict[str, Any] = dict(info or {})
        self._model: nn.Module | None = None
        self._hooks: list[Any] = []
        self._optimizers: list[torch.optim.Optimizer] = []

    # ----- mapping -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"Masks({len(self)} tensors, sparsity={self.sparsity():.4f})"

    @classmethod
    def ones(cls, model: nn.Module, exclude: Iterable[str | type[nn.Module]] = ()) -> "Masks":
        """All-keep masks for the prunable parameters of ``model`` (see :func:`prunable_parameters`)."""
        params = prunable_parameters(model, exclude=exclude)
        if not params:
            raise PruningError(
                "model has no prunable parameters: earlyprune prunes the weights of Linear and Conv1d/2d/3d "
                "layers; check the model, or that `exclude` does not remove every layer"
            )
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    # ----- statistics ----------------------------------------------------------------------------
    def layer_stats(self) -> list[LayerStats]:
        """Kept and total counts per masked parameter."""
        return [LayerStats(n, m.numel(), int(m.sum())) for n, m in self._masks.items()]

    def kept(self) -> int:
        """Number of kept weights over all masked parameters."""
        return sum(int(m.sum()) for m in self._masks.values())

    def total(self) -> int:
        """Number of weights over all masked parameters."""
        return sum(m.numel() for m in self._masks.values())

    def sparsity(self) -> float:
        """Achieved fraction of masked-parameter weights that are pruned (exact)."""
        total = self.total()
        return 1.0 - self.kept() / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        """``{parameter name: fraction pruned}``."""
        return {s.name: s.sparsity for s in self.layer_stats()}

    def collapsed(self) -> list[str]:
        """Names of parameters whose every weight is pruned (layer collapse: the network is cut)."""
        return [n for n, m in self._masks.items() if m.numel() and not bool(m.any())]

    # ----- applying ------------------------------------------------------------------------------
    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> "Masks":
        """Zero the pruned weights of ``model`` in place and keep them at zero from now on.

        Registers one gradient hook per masked parameter (replacing hooks of an earlier ``apply``).
        Pass the ``optimizer`` when pruning mid-training (see :meth:`attach`). Returns ``self``.
        """
        params = self._check_against(model)
        self.detach()
        previous = _APPLIED.get(model)
        if previous is not None and previous is not self:
            previous.detach()
        self._model = model
        _APPLIED[model] = self
        with torch.no_grad():
            for name, param in params.items():
                mask = self._masks[name] = self._masks[name].to(param.device)
                param.mul_(mask)
                if param.grad is not None:
                    param.grad.mul_(mask)
                self._hooks.append(param.register_hook(self._grad_hook(name)))
        if optimizer is not None:
            self.attach(optimizer)
        return self

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self._mask_on(name, grad.device)

        return hook

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero pruned entries of ``optimizer``'s state now and re-mask the weights after every step.

        Use this when masks are applied to a model that has already trained (momentum or Adam moments of
        pruned weights would otherwise move them), or with an optimizer whose update of a zero weight
        with zero gradient is not zero.
        """
        if self._model is None:
            raise PruningError("call masks.apply(model) before masks.attach(optimizer)")
        params = self._named_params()
        by_id = {id(p): n for n, p in params.items()}
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    name = by_id.get(id(p))
                    if name is None:
                        continue
                    for value in optimizer.state.get(p, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == p.shape:
                            value.mul_(self._mask_on(name, value.device))
        self._hooks.append(optimizer.register_step_post_hook(lambda *_: self.reapply()))
        self._optimizers.append(optimizer)

    def reapply(self) -> None:
        """Set the pruned weights of the attached model to zero again (cheap: one multiply each)."""
        if self._model is None:
            return
        with torch.no_grad():
            for name, param in self._named_params().items():
                param.mul_(self._mask_on(name, param.device))

    def _mask_on(self, name: str, device: torch.device) -> torch.Tensor:
        """The mask of ``name`` on ``device``, moved there once if the model moved after ``apply``."""
        mask = self._masks[name]
        if mask.device != device:
            mask = self._masks[name] = mask.to(device)
        return mask

    def detach(self) -> None:
        """Remove every hook this object registered; the weights stay as they are."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._optimizers = []
        if self._model is not None and _APPLIED.get(self._model) is self:
            del _APPLIED[self._model]
        self._model = None

    def reindex(self, model: nn.Module, kept_indices: Mapping[str, Mapping[int, torch.Tensor]]) -> None:
        """Slice masks after structured surgery and re-apply them to the (new) parameters of ``model``.

        ``kept_indices`` maps parameter names to ``{dim: kept index tensor}``, as returned by the
        structured surgery. Parameters are re-looked-up by name because surgery replaces them.
        """
        optimizers = list(self._optimizers)
        for name, dims in kept_indices.items():
            if name not in self._masks:
                continue
            mask = self._masks[name]
            for dim, index in dims.items():
                mask = mask.index_select(dim, index.to(mask.device))
            self._masks[name] = mask
        self.apply(model)
        for optimizer in optimizers:
            self.attach(optimizer)

    def _named_params(self) -> dict[str, nn.Parameter]:
        assert self._model is not None
        named = dict(self._model.named_parameters())
        return {n: named[n] for n in self._masks}

    def _check_against(self, model: nn.Module) -> dict[str, nn.Parameter]:
        named = dict(model.named_parameters())
        missing = [n for n in self._masks if n not in named]
        if missing:
            raise PruningError(
                f"masks name parameters the model does not have: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}; were the masks made for another architecture?"
            )
        wrong = [
            f"{n}: mask {tuple(m.shape)} vs parameter {tuple(named[n].shape)}"
            for n, m in self._masks.items()
            if m.shape != named[n].shape
        ]
        if wrong:
            raise PruningError("mask shapes do not match the model's parameters: " + "; ".join(wrong[:5]))
        return {n: named[n] for n in self._masks}

    # ----- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A plain dict of tensors and builtins, loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "format": _FORMAT,
            "masks": {n: m.cpu().clone() for n, m in self._masks.items()},
            "info": _plain(self.info),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (a killed write never leaves a partial file)."""
        state = self.state_dict()
        atomic_write(path, lambda f: torch.save(state, f))

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any]) -> "Masks":
        """Restore masks from a :meth:`state_dict` or a file written by :meth:`save`.

        Files are read with ``weights_only=True``: a file that holds anything but tensors and plain data
        is refused instead of executed.
        """
        if isinstance(source, Mapping):
            state = source
        else:
            try:
                state = torch.load(source, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise
            except Exception as exc:  # corrupt, truncated or unsafe file
                raise PruningError(f"cannot read masks from {os.fspath(source)!r}: {exc}") from exc
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT or "masks" not in state:
            raise PruningError(f"not an earlyprune masks file (expected format {_FORMAT!r})")
        masks = state["masks"]
        if not isinstance(masks, Mapping) or not all(isinstance(m, torch.Tensor) for m in masks.values()):
            raise PruningError("masks file is malformed: 'masks' must map parameter names to tensors")
        return cls(masks, info=state.get("info") or {})


def _plain(value: Any) -> Any:
    """Reduce ``value`` to types ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None or isinstance(value, torch.Tensor):
        return value
    return str(value)
