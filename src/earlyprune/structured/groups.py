"""Channel groups: sets of channels that must be removed together, found by tracing the model.

A group is one conv's output channels (or one Linear's output neurons) together with everything tied to
them: the following BatchNorm, the next layers' input channels, the flatten->Linear block of inputs,
and, through residual additions, the other layers writing to the same channels (a CIFAR ResNet's whole
stage is one group: the stem or first projection shortcut and every block's last conv). Branches joined by
a concatenation stay separate groups, each owning its slice of the next layer's inputs.

The tracing is torch-pruning's ``DependencyGraph`` (Fang et al., "DepGraph", CVPR 2023), so no
per-architecture code is needed. The model's final classifier (the last Linear/Conv to run; its outputs
are the classes) is never part of a group, nor is any group tied to it.

Attention heads: the q, k and v projections of a module that declares its heads (Hugging Face's
``num_attention_heads``/``attention_head_size``, timm's and others' ``num_heads``/``head_dim``; see
:func:`attention_heads`) form a group whose channels go by whole heads (``ChannelGroup.block`` =
head_dim; ``shrink`` updates the head count). A fused q/k/v projection (GPT-2's ``c_attn``) is left whole,
with the reason in ``GroupPlan.left_whole``. An attention this cannot recognise is caught by ``shrink``,
which checks the model still runs after surgery and otherwise restores it and names the groups.
Hugging Face models are traced with ``config.use_cache`` off (a key/value cache's concatenations are not
channel operations).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..calling import call_model, prediction
from ..errors import PruningError
from ..model_state import preserved_modes
from ..prunable import is_conv1d_like
from .recurrent import RECURRENT, customized_pruners, tracing_hooks, unsupported_reason

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: Layers whose output channels define a group (torch-pruning's "root" layers).
PRODUCERS = (*_CONVS, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class GroupMember:
    """One layer touched when the group's channels go.

    ``direction`` is ``"out"`` (the layer's output channels: a producer, or a BatchNorm/PReLU on them) or
    ``"in"`` (a consumer's input channels). ``params`` maps each affected parameter's full name to the
    dimension that is sliced (None for a layer type whose layout this module does not know; torch-pruning
    still slices it). ``width`` is how many slices of that dimension belong to the group: the group size,
    or size x H x W for a Linear fed by a flatten.
    """

    module: str
    direction: str
    params: dict[str, int | None]
    width: int


@dataclass
class ChannelGroup:
    """One set of coupled channels, valid for the model as traced (trace again after surgery).

    ``index`` (also ``id``) numbers the groups in model order; ``size`` is the number of channels.
    ``producers`` are the root layers whose output channels these are (several when tied by residual
    additions); ``root`` is the one torch-pruning prunes from. ``gate_points`` are the modules whose output is
    multiplied by the channel gate (:func:`earlyprune.structured.channel_gates`): the BatchNorm right after a
    producer, else the producer itself. ``members`` lists every coupled layer with its sliced dimensions.
    """

    index: int
    size: int
    producers: list[str]
    gate_points: list[str]
    members: list[GroupMember] = field(default_factory=list)
    root: str = ""
    # The traced graph this group belongs to and its root pruning function (used by ``shrink``).
    graph: Any = field(default=None, repr=False, compare=False)
    handler: Any = field(default=None, repr=False, compare=False)
    #: Channels go in blocks of this many: an attention module's heads (``head_dim`` channels each, channel
    #: ``i`` in head ``i // block``); 1 for single channels.
    block: int = 1
    #: The attention module whose heads these channels are (its head count is updated by ``shrink``).
    attention: str = ""
    # What the model was traced with: ``shrink`` checks the model still runs on it after surgery.
    example_inputs: Any = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> int:
        return self.index


@dataclass
class GroupPlan:
    """The traced graph and its groups, valid for the model as it is now (rebuild after surgery)."""

    graph: Any
    groups: list[ChannelGroup]
    roots: list[tuple[nn.Module, Any]]  # (root module, its out-channel pruning function) per group
    #: Channels left whole, and why: ``{root layer name: reason}`` (attention width, grouped convolutions,
    #: tied weights, bidirectional recurrent layers).
    left_whole: dict[str, str] = field(default_factory=dict)


def channel_groups(
    model: nn.Module, example_inputs: Any, ignored_layers: Iterable[nn.Module | str] | None = None
) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in model order.

    ``example_inputs`` is what ``model`` is called with for tracing (a tensor, a tuple of positional
    arguments, or a dict of keyword arguments); one example is enough. ``ignored_layers`` (modules or
    module names) are left whole, and so is every group tied to them; the final classifier always is.
    """
    return build_groups(model, example_inputs, ignored_layers or ()).groups


def build_groups(
    model: nn.Module, example_inputs: Any, ignored_layers: Iterable[nn.Module | str] = ()
) -> GroupPlan:
    """Trace ``model`` on ``example_inputs`` and list its prunable channel groups with the traced graph."""
    names = {m: n for n, m in model.named_modules()}
    ignored = _resolve_layers(model, ignored_layers)
    graph = trace(model, example_inputs)  # first: it explains a model that cannot be called on the inputs
    classifier = find_classifier(model, example_inputs)
    if classifier is not None and classifier not in ignored:
        ignored.append(classifier)
    order = {m: i for i, m in enumerate(model.modules())}
    ignored += [m for m in model.modules() if unsupported_reason(m) is not None and m not in ignored]
    owners = _parameter_owners(model)
    head_modules = attention_heads(model)
    roots_types = (*PRODUCERS, *RECURRENT, *customized_pruners(model))
    found, left_whole = [], {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=roots_types):
        root_dep = group[0].dep
        producers, members = [], []
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if isinstance(module, nn.Parameter) or module not in names:
                continue  # functional ops (add, cat, flatten) and unwrapped parameters
            out = graph.is_out_channel_pruning_fn(handler)
            members.append((module, "out" if out else "in", len(item.idxs)))
            if out and isinstance(module, roots_types):
                producers.append(module)
        if not producers:
            continue
        reason = _unprunable(model, [m for m, _, _ in members], owners, names)
        heads = None
        if reason is None:
            heads, reason = _head_structure(set(producers), head_modules, names)
        if reason is not None:
            left_whole.setdefault(names[root_dep.target.module], reason)
            continue
        # torch-pruning's traversal order can follow object addresses; sort everything by model order so
        # group indices (and so random scores and tie-breaking) are the same in every process.
        producers = sorted(set(producers), key=order.__getitem__)
        members = sorted(set(members), key=lambda m: (order[m[0]], m[1]))
        found.append((producers, members, root_dep, heads))
    found.sort(key=lambda item: order[item[0][0]])
    groups, roots = [], []
    for producers, members, root_dep, heads in found:
        root = root_dep.target.module
        groups.append(ChannelGroup(
            index=len(groups),
            size=_out_channels(root),
            producers=[names[p] for p in producers],
            gate_points=[names[_gate_point(graph, p)] for p in producers],
            members=[_member(names[m], m, direction, width) for m, direction, width in members],
            root=names[root],
            graph=graph,
            handler=root_dep.handler,
            block=heads[1] if heads else 1,
            attention=heads[0] if heads else "",
            example_inputs=example_inputs,
        ))
        roots.append((root, root_dep.handler))
    if not groups:
        why = "".join(f"; {name}: {reason}" for name, reason in left_whole.items())
        raise PruningError(
            "the model has no prunable channel groups: no Conv/Linear/LSTM/GRU/RNN outputs besides the "
            f"classifier's (or every group is tied to an ignored layer){why}"
        )
    return GroupPlan(graph, groups, roots, left_whole)


def _parameter_owners(model: nn.Module) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(name)
    return owners


def _unprunable(model: nn.Module, modules: list[nn.Module], owners: dict[int, list[str]],
                names: dict[nn.Module, str]) -> str | None:
    """Why a group touching ``modules`` is left whole, or None when its channels can be removed."""
    attention = {names[m] for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for module in modules:
        name = names[module]
        if isinstance(module, nn.MultiheadAttention) or any(name.startswith(a + ".") for a in attention):
            return (f"its channels are the embed_dim of MultiheadAttention {name.rsplit('.out_proj', 1)[0]!r} "
                    "(the model width; nn.MultiheadAttention's heads and width are not pruned)")
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not (
                module.groups == module.in_channels == module.out_channels):
            return (f"{name!r} is a grouped convolution (groups={module.groups}); only plain and depthwise "
                    "convolutions are pruned by channel")
        reason = unsupported_reason(module)
        if reason is not None:
            return f"{name!r}: {reason}"
        for p in module._parameters.values():
            if p is not None and len(owners.get(id(p), ())) > 1:
                return f"{name!r} shares a parameter with {[o for o in owners[id(p)] if o != name]} (tied weights)"
    return None


def trace(model: nn.Module, example_inputs: Any) -> Any:
    """torch-pruning's dependency graph of ``model``; every submodule's train/eval mode is kept."""
    try:
        # tracing switches the model to eval mode; every submodule gets its own mode back
        handles = tracing_hooks(model)
        try:
            # no key/value cache: its concatenations are not channel ops and break torch-pruning's tracing
            with preserved_modes(model), no_cache(model), torch.enable_grad():  # tracing follows autograd
                return tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, forward_fn=call_model, output_transform=prediction,
                    verbose=False, customized_pruners=customized_pruners(model),
                )
        finally:
            for handle in handles:
                handle.remove()
    except Exception as exc:  # tracing failures come in many types
        raise PruningError(
            f"structured pruning could not trace the model with torch-pruning ({type(exc).__name__}: {exc}). "
            "Check that example_inputs is what the model's forward takes (a tensor, a tuple of arguments or "
            "a dict of keyword arguments), pass the layers it cannot follow as ignored_layers/exclude, or "
            "prune unstructured instead"
        ) from exc


@contextlib.contextmanager
def no_cache(model: nn.Module) -> Iterator[None]:
    """Run the body with ``config.use_cache = False`` on every module config that has it (Hugging Face
    models), each restored afterwards: a key/value cache (GPT-2's ``DynamicCache``) concatenates past and
    present keys along the sequence, which torch-pruning takes for a channel concatenation of unknown size."""
    changed = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "use_cache", False) is True and id(config) not in changed:
            changed[id(config)] = config
            config.use_cache = False
    try:
        yield
    finally:
        for config in changed.values():
            config.use_cache = True


#: Attributes holding an attention module's number of heads, and the width of one head.
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_head", "n_heads")
HEAD_DIM_ATTRS = ("attention_head_size", "head_dim", "head_size", "d_head", "dim_head")
#: Attributes holding the total width of all heads (heads x head_dim), updated with the head count.
HEADS_WIDTH_ATTRS = ("all_head_size", "inner_dim")


@dataclass(frozen=True)
class AttentionHeads:
    """An attention module's head layout, as its attributes declare it."""

    name: str
    heads: int
    head_dim: int


def attention_heads(model: nn.Module) -> dict[nn.Module, AttentionHeads]:
    """Modules declaring a head structure: an int head count (``num_attention_heads``, ``num_heads``, ...)
    and an int head width (``attention_head_size``, ``head_dim``, ..., or ``all_head_size`` / heads)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            continue  # left whole by _unprunable
        heads = _int_attr(module, HEAD_COUNT_ATTRS)
        if heads is None or heads < 1:
            continue
        head_dim = _int_attr(module, HEAD_DIM_ATTRS)
        if head_dim is None:
            width = _int_attr(module, HEADS_WIDTH_ATTRS)
            head_dim = width // heads if width is not None and width % heads == 0 else None
        if head_dim is not None and head_dim >= 1:
            found[module] = AttentionHeads(name, heads, head_dim)
    return found


def _int_attr(module: nn.Module, names: Sequence[str]) -> int | None:
    for attr in names:
        value = module.__dict__.get(attr)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _head_structure(producers: set[nn.Module], head_modules: dict[nn.Module, AttentionHeads],
                    names: dict[nn.Module, str]) -> tuple[tuple[str, int] | None, str | None]:
    """``((attention module, head_dim), None)`` when a group's channels are an attention module's heads,
    ``(None, reason)`` when they are its projections' outputs but cannot be pruned by head, ``(None, None)``
    when the group has nothing to do with heads.

    A group's channels are heads when every producer is a direct child projection of one module declaring
    heads (see :func:`attention_heads`; the model itself does not count) with ``heads x head_dim`` outputs:
    its q, k and v Linear layers, which the traced dot products tie together. A group with a producer
    elsewhere (the residual stream, which an output projection inside the module also writes) is not heads
    and is pruned by channel.
    """
    by_name = {h.name: h for h in head_modules.values() if h.name}
    owners = set()
    for producer in producers:
        parent = names[producer].rpartition(".")[0]
        if parent not in by_name:
            return None, None
        owners.add(parent)
    if len(owners) != 1:
        return None, None
    owner = by_name[owners.pop()]
    width = owner.heads * owner.head_dim
    where = f"attention module {owner.name!r} ({owner.heads} heads of {owner.head_dim})"
    for producer in sorted(producers, key=lambda m: names[m]):
        out = _out_channels(producer)
        if out == 3 * width:
            return None, (f"{names[producer]!r} is a fused q/k/v projection of {where} ({out} outputs); "
                          "only separate q/k/v projections are pruned by head")
        if not isinstance(producer, nn.Linear):
            return None, (f"{names[producer]!r} of {where} is a {type(producer).__name__}, not a Linear "
                          "projection; its heads are not pruned")
        if out != width:
            return None, (f"{names[producer]!r} of {where} has {out} outputs, not heads x head_dim = {width}; "
                          "its heads are not pruned")
    return (owner.name, owner.head_dim), None


def find_classifier(model: nn.Module, example_inputs: Any) -> nn.Module | None:
    """The last Linear/Conv layer to run in a forward pass: the classifier, whose outputs stay."""
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, *_: order.append(mod))
               for m in model.modules() if isinstance(m, PRODUCERS)]
    try:
        with preserved_modes(model, train=False), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return order[-1] if order else None


def as_groups(groups: GroupPlan | Sequence[ChannelGroup]) -> list[ChannelGroup]:
    """Accept a :class:`GroupPlan` or a list of groups."""
    return list(groups.groups if isinstance(groups, GroupPlan) else groups)


def _resolve_layers(model: nn.Module, layers: Iterable[nn.Module | str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    resolved = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in modules:
                raise PruningError(f"ignored layer {layer!r} is not a module of the model")
            layer = modules[layer]
        resolved.append(layer)
    return resolved


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, RECURRENT):
        return module.hidden_size
    if is_conv1d_like(module):
        return module.weight.shape[1]
    return module.out_channels


def _gate_point(graph: Any, producer: nn.Module) -> nn.Module:
    """The BatchNorm fed only by ``producer``, and its only consumer, if there is one, else the producer.

    A gate before a BatchNorm would be normalised away in training mode (BN(c·z) = BN(z) for c > 0), and
    a gate of 0 there would leave the BatchNorm's shift β, not the zero that removing the channel gives.
    """
    node = graph.module2node.get(producer)
    if node is not None and len(node.outputs) == 1:
        out = node.outputs[0]
        if isinstance(out.module, _NORMS) and len(out.inputs) == 1:
            return out.module
    return producer


def _member(name: str, module: nn.Module, direction: str, width: int) -> GroupMember:
    """Which parameters of ``module`` torch-pruning slices, and along which dimension."""
    prefix = f"{name}." if name else ""
    own = {k: p for k, p in module._parameters.items() if p is not None}
    dims: dict[str, int | None]
    if isinstance(module, _CONVS):
        depthwise = module.groups == module.out_channels and module.out_channels > 1
        weight_dim = 0 if (direction == "out" or depthwise) else 1
        dims = {"weight": weight_dim, "bias": 0} if direction == "out" or depthwise else {"weight": weight_dim}
    elif isinstance(module, _TRANSPOSED):
        dims = {"weight": 1, "bias": 0} if direction == "out" else {"weight": 0}
    elif isinstance(module, nn.Linear):
        dims = {"weight": 0, "bias": 0} if direction == "out" else {"weight": 1}
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.PReLU)):
        dims = {"weight": 0, "bias": 0}
    elif isinstance(module, nn.LayerNorm):
        dims = {"weight": len(module.normalized_shape) - 1, "bias": len(module.normalized_shape) - 1}
    elif isinstance(module, nn.Embedding):
        dims = {"weight": 1}
    else:
        dims = {k: None for k in own}
    return GroupMember(name, direction, {prefix + k: d for k, d in dims.items() if k in own}, width)
