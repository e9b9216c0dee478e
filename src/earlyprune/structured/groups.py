"""Channel groups: sets of channels that must be removed together, found by tracing the model.

A group is one conv's output channels (or one Linear's output neurons) together with everything tied to
them: the following BatchNorm, the next layers' input channels, the flatten->Linear block of inputs,
and, through residual additions and concatenations, the other layers writing to the same channels.
The tracing is torch-pruning's ``DependencyGraph`` (Fang et al., "DepGraph", CVPR 2023), so no
per-architecture code is needed. The model's final classifier (its outputs are the classes) is never
part of a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..errors import PruningError

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class ChannelGroup:
    """One set of coupled channels.

    ``producers`` are the layers whose output channels these are; ``gate_points`` the modules whose output
    is multiplied by the channel gate (the BatchNorm right after a producer, else the producer itself).
    """

    index: int
    size: int
    producers: list[str]
    gate_points: list[str]
    members: list[str] = field(default_factory=list)


@dataclass
class GroupPlan:
    """The traced graph and its groups, valid for the model as it is now (rebuild after surgery)."""

    graph: Any
    groups: list[ChannelGroup]
    roots: list[tuple[nn.Module, Any]]  # (root module, its out-channel pruning function) per group


def find_classifier(model: nn.Module, example_inputs: Any) -> nn.Module | None:
    """The last Linear/Conv layer to run in a forward pass: the classifier, whose outputs stay."""
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, *_: order.append(mod))
               for m in model.modules() if isinstance(m, _PRODUCERS)]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(example_inputs)
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    return order[-1] if order else None


def build_groups(model: nn.Module, example_inputs: Any, ignored_layers: Sequence[nn.Module] = ()) -> GroupPlan:
    """Trace ``model`` on ``example_inputs`` and list its prunable channel groups."""
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored_layers)
    classifier = find_classifier(model, example_inputs)
    if classifier is not None and classifier not in ignored:
        ignored.append(classifier)
    modes = {m: m.training for m in model.modules()}
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as exc:  # tracing failures come in many types
        raise PruningError(
            f"structured pruning could not trace the model ({type(exc).__name__}: {exc}); it needs a model whose "
            "forward torch-pruning can follow — exclude the offending layers or prune unstructured instead"
        ) from exc
    finally:  # tracing switches the model to eval mode; give the caller back the modes it had
        for module, mode in modes.items():
            module.training = mode
    order = {m: i for i, m in enumerate(model.modules())}
    found = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_PRODUCERS):
        root_dep = group[0].dep
        producers, members = [], []
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in names:
                continue
            members.append(module)
            if graph.is_out_channel_pruning_fn(item.dep.handler) and isinstance(module, _PRODUCERS):
                producers.append(module)
        if not producers:
            continue
        # torch-pruning's traversal order can follow object addresses; sort everything by model order so
        # group indices (and so random scores and tie-breaking) are the same in every process.
        producers = sorted(set(producers), key=order.__getitem__)
        members = sorted(set(members), key=order.__getitem__)
        found.append((producers, members, root_dep))
    found.sort(key=lambda item: order[item[0][0]])
    groups, roots = [], []
    for producers, members, root_dep in found:
        size = _out_channels(root_dep.target.module)
        gate_points = [names[_gate_point(graph, p)] for p in producers]
        groups.append(ChannelGroup(len(groups), size, [names[p] for p in producers], gate_points,
                                   [names[m] for m in members]))
        roots.append((root_dep.target.module, root_dep.handler))
    if not groups:
        raise PruningError("the model has no prunable channel groups (only the classifier has outputs?)")
    return GroupPlan(graph, groups, roots)


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _gate_point(graph: Any, producer: nn.Module) -> nn.Module:
    """The BatchNorm directly fed by ``producer`` if there is one (a gate before it would be normalised
    away in training mode), else the producer itself."""
    node = graph.module2node.get(producer)
    if node is not None:
        for out in node.outputs:
            if isinstance(out.module, _NORMS) and len(out.inputs) == 1:
                return out.module
    return producer
