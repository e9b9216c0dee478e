"""Physical removal of channels, with the caller's optimizer kept working.

torch-pruning's per-group pruning slices every coupled tensor (conv out-channels, BatchNorm weights and
running statistics, the next layers' in-channels, flatten->Linear blocks, residual-tied layers) and
replaces each sliced Parameter with a new, smaller one (its ``.grad`` sliced too). This module records
exactly which indices each parameter kept, then uses that map to

* slice the optimizer in place: the old Parameter objects in ``param_groups`` are replaced by the new
  ones and their per-parameter state (SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``, ``exp_avg_sq``,
  ``max_exp_avg_sq``; scalar ``step`` kept) is sliced along the same dimensions, so the caller's
  optimizer, and an LR scheduler holding it, go on as if the removed channels had never existed;
* slice the unstructured masks applied to the model (:meth:`earlyprune.masking.MaskBinding.reindex`); other holders of
  per-parameter tensors can do the same with :attr:`ShrinkResult.kept_indices`.

Afterwards the model is plain and natively narrow: no hooks, masks or index operations are left in it,
so it runs as fast as the same architecture built at these widths from scratch.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..calling import call_model
from ..errors import PruningError
from .. import masking
from ..masking import binding as mask_binding
from ..model_state import preserved_modes
from ..prunable import is_conv1d_like
from .groups import HEAD_COUNT_ATTRS, HEADS_WIDTH_ATTRS, ChannelGroup, GroupPlan, as_groups, trace
from .recurrent import RECURRENT

#: ``{parameter name: {dim: kept indices along dim, relative to the parameter before surgery}}``
KeptIndices = dict[str, dict[int, torch.Tensor]]


@dataclass
class ShrinkResult:
    """What surgery did.

    ``kept_indices`` has an entry for every parameter whose shape changed (names as in
    ``model.named_parameters()`` after surgery, which are the names before it): slicing the old tensor
    with ``index_select(dim, index)`` for each entry gives the new one. ``kept_channels`` is the input
    ``keep`` per group. Parameter counts and the output width of every Conv/Linear layer before and after.
    """

    kept_indices: KeptIndices
    params_before: int
    params_after: int
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    kept_channels: dict[int, torch.Tensor] = field(default_factory=dict)

    def then(self, later: "ShrinkResult") -> "ShrinkResult":
        """The surgery of ``self`` followed by ``later`` (on the model ``self`` left), as one result: kept
        indices refer to the tensors before ``self``, widths run from before ``self`` to after ``later``."""
        kept: dict[str, dict[int, torch.Tensor]] = {n: dict(d) for n, d in self.kept_indices.items()}
        for name, dims in later.kept_indices.items():
            for dim, index in dims.items():
                first = kept.setdefault(name, {}).get(dim)
                kept[name][dim] = index if first is None else first[index.to(first.device)]
        channels = dict(self.kept_channels)
        for group, index in later.kept_channels.items():
            first = channels.get(group)
            channels[group] = index if first is None else first[index]
        return ShrinkResult(kept, self.params_before, later.params_after, self.widths_before, later.widths_after,
                            channels)

    def slice(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Slice per-parameter tensors (masks, scores, EMA weights...) keyed by parameter name alike."""
        return {name: slice_like(t, self.kept_indices.get(name, {})) for name, t in tensors.items()}


def shrink(
    model: nn.Module,
    groups: GroupPlan | Sequence[ChannelGroup],
    keep: Mapping[int, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    example_inputs: Any = None,
) -> ShrinkResult:
    """Remove every channel not in ``keep`` (``{group index: kept channel indices}``) from ``model``, in place.

    ``groups`` come from :func:`channel_groups` / :func:`build_groups` on this model as it is now. Groups
    missing from ``keep`` stay whole. The traced graph the groups carry is used, unless ``example_inputs``
    is given (then the model is traced again, e.g. for groups traced on a copy). With ``optimizer`` its
    parameter references and state are sliced in place; applied :class:`earlyprune.Masks` are re-sliced.
    """
    group_list = as_groups(groups)
    kept_channels = _check_keep(group_list, keep)
    targets = _pruning_targets(model, group_list, example_inputs)
    before = dict(model.named_parameters())
    params_before = sum(p.numel() for p in before.values())
    widths_before = layer_widths(model)
    work = [g for g in group_list if g.index in kept_channels and len(kept_channels[g.index]) < g.size]
    inputs = example_inputs if example_inputs is not None else next(
        (g.example_inputs for g in group_list if g.example_inputs is not None), None)
    snapshot = _snapshot(model)
    with _recording_slices() as record:
        failure = _prune_and_check(model, work, kept_channels, targets, inputs)
        if failure is not None:
            # leave the model as it was, then find the groups that break it (each alone)
            _restore(snapshot)
            culprits = []
            for group in work:
                if _prune_and_check(model, [group], kept_channels, targets, inputs) is not None:
                    culprits.append(group)
                _restore(snapshot)
            culprits = culprits or work
            named = "; ".join(f"group {g.index} (root {g.root!r}, producers {g.producers})" for g in culprits)
            raise PruningError(
                f"removing channels breaks the model ({failure}): {named}. The model is left unchanged; leave "
                "these layers whole with exclude=[...] (their outputs are probably reshaped, e.g. into "
                "attention heads this library does not recognise), or prune unstructured"
            )
    after = dict(model.named_parameters())
    kept_indices = _compose(before, after, record)
    if optimizer is not None:
        _slice_optimizer(optimizer, before, after, kept_indices)
    bound = mask_binding(model)
    if bound is not None:
        bound.reindex(kept_indices)
    return ShrinkResult(kept_indices, params_before, sum(p.numel() for p in after.values()), widths_before,
                        layer_widths(model), kept_channels)


def _prune_and_check(model: nn.Module, groups: list[ChannelGroup], kept_channels: dict[int, torch.Tensor],
                     targets: dict[int, tuple], inputs: Any) -> str | None:
    """Remove the channels of ``groups`` not kept, update the heads of attention modules, and check the
    model still runs on ``inputs``; a description of what failed, or None."""
    modules = dict(model.named_modules())
    try:
        for group in groups:
            kept = set(kept_channels[group.index].tolist())
            remove = [i for i in range(group.size) if i not in kept]
            graph, root, handler = targets[group.index]
            graph.get_pruning_group(root, handler, idxs=remove).prune()
            if group.attention:
                _set_heads(modules[group.attention], group.size, len(kept), group.block)
    except Exception as exc:  # torch-pruning's failures come in many types
        return f"{type(exc).__name__} in surgery: {exc}"
    if inputs is None or not groups:
        return None
    try:
        with preserved_modes(model, train=False), torch.no_grad(), _masks_suspended(model):
            call_model(model, inputs)
    except Exception as exc:
        return f"{type(exc).__name__} in the forward pass afterwards: {exc}"
    return None


@contextlib.contextmanager
def _masks_suspended(model: nn.Module) -> Iterator[None]:
    """Masks applied to the model are not enforced in the body: they still have the shapes from before the
    surgery (they are sliced once it is done); the weights they zeroed stay zero, sliced alike."""
    state = model.__dict__.pop(masking._ATTRIBUTE, None)
    try:
        yield
    finally:
        if state is not None:
            model.__dict__[masking._ATTRIBUTE] = state


def _set_heads(module: nn.Module, width: int, kept: int, head_dim: int) -> None:
    """Update an attention module's head count (and all-heads width) attributes after removing heads."""
    for attr in HEAD_COUNT_ATTRS:
        if module.__dict__.get(attr) == width // head_dim:
            setattr(module, attr, kept // head_dim)
    for attr in HEADS_WIDTH_ATTRS:
        if module.__dict__.get(attr) == width:
            setattr(module, attr, kept)


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Every module's attributes (one level of its dicts and lists copied, no tensor data): torch-pruning
    replaces parameters and sets attributes, so putting these back undoes a surgery."""
    return [(m, {k: (copy.copy(v) if isinstance(v, (dict, list)) else v) for k, v in m.__dict__.items()})
            for m in model.modules()]


def _restore(snapshot: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for module, state in snapshot:
        module.__dict__.clear()
        module.__dict__.update({k: (copy.copy(v) if isinstance(v, (dict, list)) else v) for k, v in state.items()})


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Linear/Conv layer (hidden size of LSTM/GRU/RNN, outputs of GPT-2's Conv1D)."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            widths[name] = m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = m.out_channels
        elif isinstance(m, RECURRENT):
            widths[name] = m.hidden_size
        elif is_conv1d_like(m):
            widths[name] = m.weight.shape[1]
    return widths


def slice_like(tensor: torch.Tensor, dims: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """``tensor`` sliced with ``index_select`` along each ``{dim: kept indices}``."""
    for dim, index in dims.items():
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def _check_keep(groups: list[ChannelGroup], keep: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    sizes = {g.index: g.size for g in groups}
    blocks = {g.index: int(getattr(g, "block", 1) or 1) for g in groups}
    attention = {g.index: getattr(g, "attention", "") for g in groups}
    unknown = [k for k in keep if k not in sizes]
    if unknown:
        raise PruningError(f"keep names groups that are not given: {unknown[:5]}")
    checked = {}
    for index, kept in keep.items():
        kept = torch.as_tensor(kept)
        if kept.numel() == 0:
            raise PruningError(f"keep[{index}] is empty: group {index} would vanish and cut the network")
        if kept.dim() != 1 or kept.is_floating_point() or kept.dtype == torch.bool:
            raise PruningError(f"keep[{index}] must be a 1-D tensor of integer channel indices")
        kept = kept.long().cpu()
        if int(kept.min()) < 0 or int(kept.max()) >= sizes[index]:
            raise PruningError(f"keep[{index}] has indices outside [0, {sizes[index]})")
        unique = torch.unique(kept)  # sorted
        if unique.numel() != kept.numel():
            raise PruningError(f"keep[{index}] has repeated indices")
        block = blocks[index]
        if block > 1:
            counts = torch.bincount(unique // block, minlength=sizes[index] // block)
            split = [int(h) for h in torch.nonzero((counts > 0) & (counts < block)).flatten()]
            if split:
                raise PruningError(
                    f"keep[{index}] splits heads {split[:5]} of attention module {attention[index]!r}: its "
                    f"channels go by whole heads of {block} (channels h*{block} ... h*{block}+{block - 1})"
                )
        checked[index] = unique
    return checked


def _pruning_targets(model: nn.Module, groups: list[ChannelGroup], example_inputs: Any) -> dict[int, tuple]:
    """Per group: (traced graph, root module, out-channel pruning function), checked against the model."""
    modules = dict(model.named_modules())
    widths = layer_widths(model)
    for g in groups:
        width = widths.get(g.root)
        if width != g.size:
            raise PruningError(
                f"group {g.index} (root {g.root!r}, {g.size} channels) does not match the model (now {width}): "
                "groups are valid for the model as traced; trace again (channel_groups) after surgery"
            )
    if example_inputs is not None:
        graph = trace(model, example_inputs)
        return {g.index: (graph, modules[g.root], graph.get_pruner_of_module(modules[g.root]).prune_out_channels)
                for g in groups}
    graphs = {id(g.graph) for g in groups}
    graph = groups[0].graph if groups else None
    if graph is None or len(graphs) > 1 or getattr(graph, "model", None) is not model:
        raise PruningError(
            "the groups were not traced on this model (or come from several traces): pass example_inputs "
            "to trace it again, or build the groups with channel_groups(model, example_inputs)"
        )
    return {g.index: (graph, modules[g.root], g.handler) for g in groups}


@contextlib.contextmanager
def _recording_slices() -> Iterator[dict[int, tuple[nn.Parameter, int, torch.Tensor]]]:
    """Record every parameter slice torch-pruning makes: id(new param) -> (old param, dim, kept indices).

    torch-pruning makes each new Parameter in one place, ``BasePruningFunc._prune_parameter_and_grad``;
    wrapping it sees every slice, whatever the layer type. The new Parameter also gets the old one's
    ``requires_grad`` (torch-pruning would make frozen parameters trainable).
    """
    record: dict[int, tuple[nn.Parameter, int, torch.Tensor]] = {}
    base = tp.pruner.function.BasePruningFunc
    original = base._prune_parameter_and_grad

    def recording(self, weight, keep_idxs, pruning_dim):
        new = original(self, weight, keep_idxs, pruning_dim)
        new.requires_grad_(weight.requires_grad)
        record[id(new)] = (weight, pruning_dim, torch.as_tensor(keep_idxs, dtype=torch.long).cpu())
        return new

    base._prune_parameter_and_grad = recording
    try:
        yield record
    finally:
        base._prune_parameter_and_grad = original


def _compose(before: dict[str, nn.Parameter], after: dict[str, nn.Parameter], record) -> KeptIndices:
    """Per parameter name, the kept indices along each dimension relative to the original tensor."""
    kept: KeptIndices = {}
    for name, new in after.items():
        chain = []
        current = new
        while id(current) in record:
            old, dim, index = record[id(current)]
            chain.append((dim, index))
            current = old
        if not chain:
            continue
        if current is not before.get(name):
            raise RuntimeError(f"surgery lost track of parameter {name}")
        dims: dict[int, torch.Tensor] = {}
        for dim, index in reversed(chain):  # oldest slice first
            dim = dim % new.dim()
            dims[dim] = dims[dim][index] if dim in dims else index
        kept[name] = dims
    return kept


def _slice_optimizer(optimizer: torch.optim.Optimizer, before: dict[str, nn.Parameter],
                     after: dict[str, nn.Parameter], kept: KeptIndices) -> None:
    replaced = {id(before[n]): (n, after[n]) for n in kept}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if id(p) not in replaced:
                continue
            name, new = replaced[id(p)]
            group["params"][i] = new
            state = optimizer.state.pop(p, None)
            if state:
                optimizer.state[new] = {
                    k: (slice_like(v, kept[name]) if isinstance(v, torch.Tensor) and v.shape == p.shape else v)
                    for k, v in state.items()
                }
