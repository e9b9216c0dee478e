"""Size and cost of a (pruned) model: parameters, non-zero parameters, dense and effective FLOPs.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of one example
(convolutions and matrix products; element-wise ops are not counted, as in the papers). The effective
FLOPs of a layer under unstructured masks are its dense FLOPs times the fraction of its weights that are
non-zero, the usual "theoretical" count of the pruning literature (ShrinkBench's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .batches import leading_dim, to_device
from .calling import call_model
from .model_state import isolated, model_device, model_dtype
from .prunable import default_weight_names


@dataclass
class LayerReport:
    """One layer with parameters: its size and cost."""

    name: str
    kind: str
    params: int
    nonzero: int
    flops: int | None
    effective_flops: int | None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0


@dataclass
class Report:
    """Totals and per-layer figures; ``str(report)`` is a table, :meth:`as_dict` a plain dict."""

    params: int
    nonzero: int
    flops: int | None
    effective_flops: int | None
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Fraction of all parameters (biases and norms included) that are zero."""
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    @property
    def compression(self) -> float:
        """params / nonzero (ShrinkBench's compression ratio)."""
        return self.params / self.nonzero if self.nonzero else float("inf")

    @property
    def speedup(self) -> float | None:
        """Theoretical speedup: dense FLOPs / effective FLOPs."""
        if not self.flops or not self.effective_flops:
            return None
        return self.flops / self.effective_flops

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(sparsity=self.sparsity, compression=self.compression, speedup=self.speedup)
        for layer, obj in zip(data["layers"], self.layers):
            layer["sparsity"] = obj.sparsity
        return data

    def __str__(self) -> str:
        rows = [("layer", "type", "params", "non-zero", "sparsity", "FLOPs", "eff. FLOPs")]
        for layer in self.layers:
            rows.append(
                (layer.name, layer.kind, f"{layer.params:,}", f"{layer.nonzero:,}", f"{layer.sparsity:.2%}",
                 _fmt(layer.flops), _fmt(layer.effective_flops))
            )
        rows.append(
            ("total", "", f"{self.params:,}", f"{self.nonzero:,}", f"{self.sparsity:.2%}",
             _fmt(self.flops), _fmt(self.effective_flops))
        )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for index, row in enumerate(rows):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
            lines.append("  ".join(cells).rstrip())
            if index == 0 or index == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        extra = f"compression {self.compression:.2f}x"
        if self.speedup is not None:
            extra += f", theoretical speedup {self.speedup:.2f}x"
        return "\n".join(lines + [extra])


def _fmt(flops: int | None) -> str:
    if flops is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.2f}{unit}"
    return str(flops)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of ``model``, each shared parameter once; no forward pass (what
    :func:`report` totals, without its FLOPs)."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique), sum(int(torch.count_nonzero(p.detach())) for p in unique)


def report(
    model: nn.Module,
    example_inputs: Any = None,
    input_shape: Sequence[int] | None = None,
) -> Report:
    """Parameters, non-zero parameters, dense and effective FLOPs of ``model``, per layer and in total.

    FLOPs need one input: ``example_inputs`` (a batch; FLOPs are divided by its batch size), or
    ``input_shape`` (without batch dimension), or the model's ``input_shape`` attribute (the reference
    models have one). Without any of these, FLOPs are reported as ``None``.
    """
    counted_flops = _flops_per_module(model, example_inputs, input_shape)
    total_flops, per_module_flops = counted_flops if counted_flops is not None else (None, None)
    layers: list[LayerReport] = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        params = sum(p.numel() for p in own)
        nonzero = sum(int(torch.count_nonzero(p)) for p in own)
        flops = effective = None
        if per_module_flops is not None:
            flops = per_module_flops.get(name, 0)
            weights = [module._parameters[n] for n in default_weight_names(module)]
            size = sum(w.numel() for w in weights)
            if size:
                effective = round(flops * sum(int(torch.count_nonzero(w)) for w in weights) / size)
            else:
                effective = flops
        layers.append(LayerReport(name or "(model)", type(module).__name__, params, nonzero, flops, effective))
    total_params, total_nonzero = parameter_counts(model)
    total_eff = None
    if per_module_flops is not None:
        counted = sum(layer.flops or 0 for layer in layers)
        # FLOPs of modules without parameters (e.g. a matmul in a custom forward) count as dense.
        total_eff = sum(layer.effective_flops or 0 for layer in layers) + max(0, total_flops - counted)
    return Report(total_params, total_nonzero, total_flops, total_eff, layers)


def _flops_per_module(
    model: nn.Module, example_inputs: Any, input_shape: Sequence[int] | None
) -> tuple[int, dict[str, int]] | None:
    """``(total FLOPs, {module name: FLOPs of the module's own ops, children excluded})`` per example; the
    root's own part is under ``""``."""
    batch = 1
    if example_inputs is None:
        shape = input_shape or getattr(model, "input_shape", None)
        if shape is None:
            return None
        example_inputs = torch.ones((1, *shape))
    else:
        batch = _batch_size(example_inputs)
    inputs = to_device(example_inputs, model_device(model), model_dtype(model))
    counter = FlopCounterMode(display=False)
    with isolated(model, train=False), torch.no_grad(), counter:
        call_model(model, inputs)
    prefix = type(model).__name__
    inclusive: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key.startswith(prefix + "."):
            inclusive[key[len(prefix) + 1:]] = sum(ops.values())
    # The counter's figure for a module includes its children's: keep each module's own part, so that a
    # module with parameters of its own *and* children (a class token beside its blocks, attention with
    # its projections) is not counted twice. The root is such a module too (a ViT's cls_token).
    total = counter.get_total_flops()
    counts: dict[str, int] = {"": max(0, total - sum(v for k, v in inclusive.items() if "." not in k)) // batch}
    for name in inclusive:
        children = [other for other in inclusive if other.startswith(name + ".") and
                    "." not in other[len(name) + 1:]]
        counts[name] = max(0, inclusive[name] - sum(inclusive[c] for c in children)) // batch
    return total // batch, counts


def _batch_size(example_inputs: Any) -> int:
    """Leading dimension of the first batched tensor in ``example_inputs`` (a tensor, dict, list or tuple)."""
    return leading_dim(example_inputs) or 1
