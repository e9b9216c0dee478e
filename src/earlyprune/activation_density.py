"""Activation-density pruning in training (Foldy-Porto, Venkatesha, Panda, "Activation Density driven
Energy-Efficient Pruning in Training", arXiv 2002.02949, 2020).

During normal training, hooks on every ``nn.ReLU`` count how many of its outputs are non-zero, per channel.
The activation density of a layer is AD_l = (non-zero outputs) / (all outputs) (the lab's follow-up,
arXiv 2101.04354: "the proportion of non-zero activations in a layer"). Every ``prune_every`` epochs the
network is resized: each layer keeps ``round(AD_l * width)`` channels, its densest ones, and training
continues on the smaller network with the surviving weights (no re-initialisation), through the same
physical surgery and optimizer-state carry-over as structured EarlyCroP (:mod:`earlyprune.structured`).

What the paper's abstract and introduction state, and this module follows: the network is pruned "real-time
during training", with no pre-trained network; an "activation density based analysis ... identifies the
optimal relative sizing or compression for each layer"; the network size is reduced "periodically during
training"; compressed networks obtained "at different epochs" are compared in training compute with a
baseline "trained entirely from scratch" (``last_epoch`` is that epoch here). Its algorithm section (when
densities are measured, the exact width rule, whether training restarts after a resize, when resizing stops)
could not be consulted, so the points below are choices, not the paper's stated rules (docs/methods.md,
"Activation density: what the paper says and what is our choice").

Choices where the paper is silent (documented and tested):

* data and averaging: the counts accumulate over the training batches since the last resize (the
  ``prune_every`` epochs that just ended), in training mode, on every ``count_every``-th forward pass (default 4: the estimate
  still rests on thousands of examples per epoch, and counting costs a quarter; 1 counts every batch);
  counting is one sign and one sum per ReLU output;
* the width rule is applied to the current width at each resize (8 channels at density 0.5 twice: 8, 4, 2),
  so the compression compounds over resizes (with ReLU layers near half dense, four resizes of a VGG leave
  about 1/256 of its convolution weights: the order of the paper's "up to 200x" fewer parameters);
* which channels go: those with the lowest per-channel density (most often zero);
* rounding and minimum: ``max(min_channels, ceil(min_fraction * original width), round(AD_l * width))``;
* residual-tied channels (one group) are decided together: their density pools the counts of every ReLU
  that reads the group's channels (e.g. the stem ReLU and each block's output ReLU of a ResNet stage);
* training after a resize continues from the surviving weights and their optimizer state;
* stopping: once a resize shrinks no layer by more than ``stop_below`` (default 5%) of its width, resizing
  stops; and no resize happens after ``last_epoch`` (if given), so the final widths get the rest of
  training to recover. ReLU layers often stay near half dense after each resize, so without a last
  epoch the widths keep halving: ``earlyprune run`` sets ``last_epoch`` to half the epochs (the same
  cap as its EarlyCroP trigger) unless ``--option last_epoch=N`` is given (:data:`RUN_OPTIONS`);
* only ReLU: "non-zero" is exact for ReLU outputs. Models with other activation modules (GELU, SiLU, Tanh,
  Sigmoid, LeakyReLU, ELU, ...) are refused, as are models that apply ReLU functionally (no module to
  hook) and models that run one ReLU module more than once per forward pass (its counts would mix
  layers); a group that no ReLU reads, or read only by ReLUs over more channels than its own (after a
  concatenation), keeps its width.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .batches import to_device
from .calling import call_model
from .distributed import average_across_ranks
from .errors import PruningError
from .metrics import report
from .model_state import model_device, model_dtype, preserved_modes
from .structured import build_groups, shrink
from .structured.groups import ChannelGroup, GroupPlan

_OTHER_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.PReLU, nn.Hardswish,
                      nn.Mish, nn.Softplus, nn.ReLU6, nn.Hardtanh, nn.CELU)

def check_settings(*, last_epoch: Any, stop_below: Any, min_fraction: Any, min_channels: Any, count_every: Any,
                   prune_every: Any = 1) -> None:
    """Raise :class:`PruningError` for a setting of :class:`ActivationDensityPruner` out of its range."""
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name, value in (("prune_every", prune_every), ("count_every", count_every), ("min_channels", min_channels)):
        if not integer(value) or value < 1:
            raise PruningError(f"{name} must be an integer >= 1, got {value!r}")
    if last_epoch is not None and (not integer(last_epoch) or last_epoch < 1):
        raise PruningError(f"last_epoch must be an integer >= 1 (the last epoch after which a resize may happen) "
                           f"or None (no limit), got {last_epoch!r}")
    for name, value in (("stop_below", stop_below), ("min_fraction", min_fraction)):
        if not number(value) or not 0.0 <= value <= 1.0:
            raise PruningError(f"{name} must be a number in [0, 1], got {value!r}")


def run_settings(options: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """The pruner's keyword arguments for a run of ``epochs`` epochs given its ``--option`` values
    (:data:`RUN_OPTIONS`): the defaults, with ``last_epoch`` half the epochs (at least 1) unless given."""
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise PruningError(f"unknown option {', '.join(map(repr, unknown))} for method 'activation_density'; "
                           f"valid options: {', '.join(RUN_OPTIONS)}")
    settings = {**RUN_OPTIONS, **options}
    if settings["last_epoch"] is None:
        settings["last_epoch"] = max(1, epochs // 2)
    check_settings(**settings)
    return settings


@dataclass
class ResizeEvent:
    """One resize: when, layer densities, and widths and costs before and after."""

    epoch: int
    densities: dict[str, float]
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Counts:
    nonzero: torch.Tensor
    total: int = 0


class ActivationDensityPruner:
    """Measure activation density during training and resize the network periodically.

    Args:
        model: the model being trained (changed in place); needs ``nn.ReLU`` modules.
        example_inputs: one batch of inputs (to trace the model's channel groups).
        optimizer: the training optimizer; its state is sliced to the surviving channels.
        prune_every: epochs between resizes.
        min_fraction / min_channels: the smallest width a layer may reach.
        stop_below: stop resizing once no layer shrinks by more than this fraction.
        last_epoch: no resize after this epoch (None: no limit).
        count_every: count activations on every ``count_every``-th training forward pass (1: all).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        optimizer: torch.optim.Optimizer | None = None,
        prune_every: int = 1,
        min_fraction: float = 0.05,
        min_channels: int = 1,
        stop_below: float = 0.05,
        last_epoch: int | None = None,
        count_every: int = 4,
    ):
        check_settings(last_epoch=last_epoch, stop_below=stop_below, min_fraction=min_fraction,
                       min_channels=min_channels, count_every=count_every, prune_every=prune_every)
        others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _OTHER_ACTIVATIONS)})
        if others:
            raise PruningError(
                f"activation-density pruning counts non-zero ReLU outputs, but the model uses {', '.join(others)}: "
                "their outputs are (almost) never exactly zero, so density is not defined; use a ReLU model or "
                "another structured method"
            )
        if not any(isinstance(m, nn.ReLU) for m in model.modules()):
            raise PruningError(
                "activation-density pruning hooks nn.ReLU modules and the model has none (functional relu cannot "
                "be hooked); use nn.ReLU() modules"
            )
        self.model = model
        self.example_inputs = to_device(example_inputs, model_device(model), model_dtype(model))
        self.optimizer = optimizer
        self.prune_every = prune_every
        self.min_fraction = min_fraction
        self.min_channels = min_channels
        self.stop_below = stop_below
        self.last_epoch = last_epoch
        self.count_every = count_every
        self._forwards = 0  # training forward passes seen; those with index % count_every == 0 are counted
        self._counting = False
        self.events: list[ResizeEvent] = []
        self.stopped = False
        self._epochs_since = 0
        self._epoch = 0  # epochs seen (when epoch_end is not told the epoch)
        self._hooks: list[Any] = []
        self._counts: dict[str, _Counts] = {}
        self._original_sizes: dict[str, int] = {}
        self._plan: GroupPlan | None = None
        self._relu_group: dict[str, str] = {}
        self._rebuild()

    # ----- measuring -----------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """Trace the groups, map each ReLU to the group whose channels it reads, (re)attach hooks."""
        self.remove_hooks()
        self._plan = build_groups(self.model, self.example_inputs)
        self._relu_group = relu_groups(self.model, self._plan, self.example_inputs)
        for group in self._plan.groups:
            self._original_sizes.setdefault(group.producers[0], group.size)
        modules = dict(self.model.named_modules())
        self._hooks.append(self.model.register_forward_pre_hook(self._forward_pre_hook))
        for relu_name in self._relu_group:
            self._hooks.append(modules[relu_name].register_forward_hook(self._count_hook(relu_name)))
        self._counts = {}

    def _forward_pre_hook(self, module: nn.Module, inputs: Any) -> None:
        """Decide once per forward pass whether its activations are counted (a ReLU module used several
        times in one pass is then counted on every use or on none)."""
        if module.training:
            self._counting = self._forwards % self.count_every == 0
            self._forwards += 1
        else:
            self._counting = False

    def _count_hook(self, relu_name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if not (module.training and self._counting):
                return
            with torch.no_grad():
                dims = [0] + list(range(2, output.dim()))
                per_channel_outputs = output.numel() // output.shape[1]
                # ReLU outputs are >= 0, so sign() is exactly 1 where an output is non-zero and 0 elsewhere:
                # its float sum is the count (exact in float32 up to 2**24 per channel and batch) and runs
                # several times faster than counting booleans. Counts stay on the model's device (no sync).
                # The sum is always taken in float32 or wider: a float16/bfloat16 model's own dtype would
                # round counts above 2048 (float16) or 256 (bfloat16).
                exact = torch.float64 if per_channel_outputs > 2**24 else torch.float32
                per_channel = torch.sign(output.detach()).sum(dim=dims, dtype=exact)
                counts = self._counts.get(relu_name)
                if counts is None:
                    self._counts[relu_name] = _Counts(per_channel.to(torch.float64), per_channel_outputs)
                else:
                    counts.nonzero += per_channel
                    counts.total += per_channel_outputs

        return hook

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def channel_density(self) -> dict[str, torch.Tensor]:
        """Per group (named by its first producer): the fraction of non-zero outputs of each channel."""
        pooled: dict[str, tuple[torch.Tensor, int]] = {}
        for relu_name, group_name in self._relu_group.items():
            counts = self._counts.get(relu_name)
            if counts is None:
                continue
            if group_name in pooled:
                nonzero, total = pooled[group_name]
                pooled[group_name] = (nonzero + counts.nonzero.cpu(), total + counts.total)
            else:
                pooled[group_name] = (counts.nonzero.cpu().clone(), counts.total)
        return {name: nonzero / total for name, (nonzero, total) in pooled.items() if total}

    def layer_density(self) -> dict[str, float]:
        """AD_l per group: non-zero outputs over all outputs."""
        return {name: float(d.mean()) for name, d in self.channel_density().items()}

    # ----- resizing ------------------------------------------------------------------------------
    def epoch_end(self, epoch: int | None = None, optimizer: torch.optim.Optimizer | None = None) -> ResizeEvent | None:
        """Call after each training epoch; resizes when due and returns the resize it made, if any."""
        if optimizer is not None:
            self.optimizer = optimizer
        self._epochs_since += 1
        self._epoch = epoch = epoch if epoch is not None else self._epoch + 1
        if self.last_epoch is not None and epoch > self.last_epoch:
            self.stopped = True
            self.remove_hooks()  # nothing more to measure
        if self.stopped or self._epochs_since < self.prune_every:
            return None
        self._epochs_since = 0
        event = self.resize(epoch)
        return event

    def resize(self, epoch: int = 0) -> ResizeEvent | None:
        """Shrink every layer to its activation density now; returns None if nothing changed."""
        assert self._plan is not None
        # Under torch.distributed each rank saw its own shard: average so all ranks resize alike.
        density = average_across_ranks(self.channel_density())
        if not density:
            raise PruningError(
                "no activations were measured: run training batches (in train mode) before resizing; only every "
                f"{self.count_every}-th training forward pass is counted (count_every), so lower it for short epochs"
            )
        broken = sorted(name for name, d in density.items() if not torch.isfinite(d).all())
        if broken:
            raise PruningError(
                f"activation density of {', '.join(broken)} is NaN: the activations were NaN (training diverged); "
                "lower the learning rate or check the inputs before resizing"
            )
        keep: dict[int, torch.Tensor] = {}
        largest_cut = 0.0
        for group in self._plan.groups:
            name = group.producers[0]
            if name not in density:
                keep[group.index] = torch.arange(group.size)
                continue
            width = self.new_width(group, float(density[name].mean()))
            order = torch.sort(density[name], descending=True, stable=True).indices
            keep[group.index] = order[:width].sort().values
            largest_cut = max(largest_cut, 1 - width / group.size)
        if largest_cut <= self.stop_below:
            self.stopped = True
        if all(len(keep[g.index]) == g.size for g in self._plan.groups):
            self._counts = {}
            self._unhook_if_stopped()
            return None
        before = report(self.model, example_inputs=self.example_inputs)
        self.remove_hooks()
        result = shrink(self.model, self._plan, keep, optimizer=self.optimizer)
        self._rebuild()
        self._unhook_if_stopped()
        after = report(self.model, example_inputs=self.example_inputs)
        event = ResizeEvent(epoch, {k: float(v.mean()) for k, v in density.items()}, result.widths_before,
                            result.widths_after, before.params, after.params, before.flops, after.flops)
        self.events.append(event)
        return event

    def _unhook_if_stopped(self) -> None:
        """Once resizing has stopped nothing more is measured, so training runs without the hooks."""
        if self.stopped:
            self.remove_hooks()

    def new_width(self, group: ChannelGroup, layer_density: float) -> int:
        original = self._original_sizes.get(group.producers[0], group.size)
        floor = max(self.min_channels, math.ceil(self.min_fraction * original))
        return min(group.size, max(floor, round(layer_density * group.size)))


#: The pruner's settings ``earlyprune run --method activation_density --option NAME=VALUE`` takes, with their
#: defaults (``prune_every`` has its own flag, ``--prune-every``). ``last_epoch=None`` there is half the run's
#: epochs (at least 1); ``last_epoch`` equal to the epochs lets resizing go on to the end.
RUN_OPTIONS: dict[str, Any] = {
    name: parameter.default for name, parameter in inspect.signature(ActivationDensityPruner).parameters.items()
    if name in ("last_epoch", "stop_below", "min_fraction", "min_channels", "count_every")
}  # the pruner's own defaults



def relu_groups(model: nn.Module, plan: GroupPlan, example_inputs: Any) -> dict[str, str]:
    """``{ReLU module name: first producer of the group whose channels it reads}``.

    Found on one forward pass: from each ReLU's input, the autograd graph is walked back through
    parameter-free operations (additions, pooling, reshapes) to the first output of a group's gate point
    (the BatchNorm after a producer, or the producer itself). A residual block's output ReLU reads the
    sum of two gate points of the same group, so it maps to that group.
    """
    modules = dict(model.named_modules())
    gate_fns: dict[Any, str] = {}
    relu_inputs: dict[str, Any] = {}
    handles = []

    def gate_hook(group_name: str):
        def hook(module, inputs, output):
            if output.grad_fn is not None:
                gate_fns[output.grad_fn] = group_name
        return hook

    calls: dict[str, int] = {}
    relu_channels: dict[str, int] = {}

    def relu_hook(relu_name: str):
        def hook(module, inputs, output):
            calls[relu_name] = calls.get(relu_name, 0) + 1
            relu_inputs[relu_name] = inputs[0].grad_fn
            relu_channels[relu_name] = output.shape[1] if output.dim() > 1 else 0
        return hook

    for group in plan.groups:
        for point in group.gate_points:
            handles.append(modules[point].register_forward_hook(gate_hook(group.producers[0])))
    for name, module in modules.items():
        if isinstance(module, nn.ReLU):
            handles.append(module.register_forward_hook(relu_hook(name)))
    try:
        with preserved_modes(model, train=False), torch.enable_grad():
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    reused = sorted(name for name, count in calls.items() if count > 1)
    if reused:
        raise PruningError(
            f"activation-density pruning measures each nn.ReLU module as one layer, but {', '.join(reused)} "
            "run(s) more than once per forward pass (e.g. torchvision's BasicBlock reuses self.relu), which would mix "
            "the densities of different layers: give every use its own nn.ReLU module"
        )
    sizes = {g.producers[0]: g.size for g in plan.groups}
    mapping: dict[str, str] = {}
    for relu_name, start in relu_inputs.items():
        frontier, seen = [start], set()
        while frontier:
            fn = frontier.pop(0)
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if fn in gate_fns:
                # A ReLU over more channels than the group (after a concatenation) is not this group's layer.
                if relu_channels.get(relu_name) == sizes[gate_fns[fn]]:
                    mapping[relu_name] = gate_fns[fn]
                break
            if _has_parameter_input(fn):
                break  # another layer with weights lies between: not one of our groups' channels
            frontier.extend(next_fn for next_fn, _ in fn.next_functions)
    return mapping


def _has_parameter_input(fn: Any) -> bool:
    """Whether an autograd node takes a leaf parameter (a layer with weights, e.g. an excluded conv)."""
    return any(type(next_fn).__name__ == "AccumulateGrad" for next_fn, _ in fn.next_functions if next_fn is not None)
