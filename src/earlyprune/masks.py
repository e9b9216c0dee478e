"""Unstructured weight masks as a value: a mapping, its statistics, persistence and slicing.

A :class:`Masks` maps parameter names (as in ``model.named_parameters()``) to boolean tensors of the
parameter's shape, ``True`` = keep. It holds no reference to any model: the same masks can be applied
to several models, saved, loaded and sliced. Applying them (:meth:`Masks.apply`) returns a
:class:`~earlyprune.masking.MaskBinding`, which lives with the module (see :mod:`earlyprune.masking`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from .atomic import atomic_write
from .errors import PruningError
from .safe_load import load_plain
from .prunable import NO_PRUNABLE, prunable_parameters

if TYPE_CHECKING:
    from .masking import MaskBinding

_FORMAT = "earlyprune.masks/1"


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
            if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
                raise PruningError(
                    f"mask for {name!r} holds values other than 0 and 1 (a {mask.dtype} tensor of scores or "
                    "probabilities?): a mask says keep (1/True) or prune (0/False); threshold it first"
                )
            checked[name] = mask.detach().to(torch.bool)
        self._masks = checked
        #: Free-form record of how the masks were made (method, sparsity, collapsed layers, ...).
        self.info: dict[str, Any] = dict(info or {})

    # ----- mapping -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"Masks({len(self)} tensors, sparsity={self.sparsity():.4f})"

    def __eq__(self, other: object) -> bool:
        """Same names and equal masks (``info`` is not compared)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return list(self) == list(other) and all(
            isinstance(other[n], torch.Tensor) and torch.equal(m, other[n].to(device=m.device, dtype=torch.bool))
            for n, m in self.items()
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def ones(cls, model: nn.Module, exclude: Iterable[str | type[nn.Module]] = ()) -> "Masks":
        """All-keep masks for the prunable parameters of ``model`` (see :func:`prunable_parameters`)."""
        params = prunable_parameters(model, exclude=exclude)
        if not params:
            raise PruningError(NO_PRUNABLE)
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_torch_prune(cls, model: nn.Module) -> "Masks":
        """The masks of a model pruned with ``torch.nn.utils.prune`` (``weight_orig``/``weight_mask``) or
        ``torch.ao.pruning`` (``FakeSparsity``), under the plain parameter names; the model is made plain
        (``weight`` a Parameter again, holding ``orig * mask``). ``masks.apply(model)`` then keeps it pruned.
        See :mod:`earlyprune.torch_prune`."""
        from .torch_prune import masks_from_torch

        return cls(masks_from_torch(model), info={"source": "torch pruning"})

    def to_torch_prune(self, model: nn.Module) -> nn.Module:
        """Put these masks on ``model`` in ``torch.nn.utils.prune``'s form (``<name>_orig`` and ``<name>_mask``,
        ``prune.custom_from_mask``), replacing earlyprune's binding if there is one; returns the model."""
        from .torch_prune import to_torch_prune

        return to_torch_prune(model, self._masks)

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

    # ----- new values ----------------------------------------------------------------------------
    def slice(self, kept_indices: Mapping[str, Mapping[int, torch.Tensor]]) -> "Masks":
        """The masks after structured surgery: each mask named in ``kept_indices`` (``{param: {dim: kept
        indices}}``, as the surgery reports them) sliced with ``index_select`` along those dims."""
        sliced = {}
        for name, mask in self._masks.items():
            for dim, index in kept_indices.get(name, {}).items():
                mask = mask.index_select(dim, index.to(mask.device))
            sliced[name] = mask
        return Masks(sliced, info=self.info)

    # ----- applying ------------------------------------------------------------------------------
    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> "MaskBinding":
        """Zero the pruned weights of ``model`` in place and keep them at zero from now on; returns the
        :class:`~earlyprune.masking.MaskBinding` (``.attach(optimizer)``, ``.remove()``).

        The binding lives with ``model`` itself: it survives ``copy.deepcopy``, ``.to()`` and pickling, and
        masks applied to several models keep each one pruned. Masks applied before to ``model`` are
        replaced. Pass the ``optimizer`` when pruning mid-training (see ``MaskBinding.attach``).
        """
        from .masking import bind

        return bind(model, self, optimizer=optimizer)

    def check_against(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The model's parameters these masks name, or a clear error for missing names or other shapes."""
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
        state = load_plain(source, "masks")
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
