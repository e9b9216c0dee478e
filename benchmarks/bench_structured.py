"""Structured pruning on the CPU or a GPU: training-step time and memory of the shrunk model, side by side with
the dense model and with a natively narrow model of the same layer widths built from scratch.

For each model and each fraction of channels removed (random channel importance, global ranking), every
variant is measured in its own fresh process (so peak memory is its own): the median time of a training
step (forward, backward, SGD with momentum) after warm-up, and the growth of the peak resident set size
(``resource.getrusage`` maxrss) during training over the process's size before it. Two references: the
FLOPs ratio (dense / shrunk, counted by ``torch.utils.flop_counter.FlopCounterMode``), which small layers on
a CPU never reach (per-operation overhead and memory traffic dominate), and the natively narrow model,
which the shrunk one should match: ``vs native`` is the median ratio of shrunk to native step time, the
two models trained in one process with their steps interleaved so machine load hits both alike (1.00 = as
fast; no hooks, masks or index operations are left behind by the surgery).

On a GPU (``--device cuda``) steps are timed with ``torch.cuda.synchronize`` around them, and memory is the
growth of ``torch.cuda.max_memory_allocated`` during training over what the model and data took before.

Usage: python benchmarks/bench_structured.py [--models resnet20 vgg16:0.25] [--steps 20] [--threads 2]
       [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def build(spec: str, sparsity: float, variant: str) -> nn.Module:
    import earlyprune as ep
    from earlyprune import models

    name, _, width = spec.partition(":")
    torch.manual_seed(0)
    model = models.create(name, width=float(width or 1.0))
    if sparsity > 0:
        batch = (torch.randn(8, *model.input_shape), torch.arange(8) % 10)
        ep.prune_channels(model, "random", sparsity, data=batch)  # the batch gives the traced input
        if variant == "native":
            model = rebuilt_from_scratch(model)
    return model


def rebuilt_from_scratch(model: nn.Module) -> nn.Module:
    """The same architecture and widths with every layer constructed anew (no trace of the surgery)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, bias=child.bias is not None)
            elif isinstance(child, nn.BatchNorm2d):
                new = nn.BatchNorm2d(child.num_features)
            elif isinstance(child, nn.Linear):
                new = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            else:
                continue
            setattr(parent, child_name, new)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one training step (forward, backward, optimizer), the device synchronised around it."""
    sync(x.device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    sync(x.device)
    return time.perf_counter() - start


def measure(spec: str, sparsity: float, variant: str, steps: int, batch: int, threads: int,
            device: str = "cpu") -> dict:
    """Run in a fresh process: time and memory of training steps of one variant."""
    import earlyprune as ep

    torch.set_num_threads(threads)
    device = torch.device(device)
    model = build(spec, sparsity, variant).to(device)
    rep = ep.report(model)
    x = torch.randn(batch, *model.input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    times = []
    for i in range(steps + 3):
        elapsed = timed_step(model, optimizer, x, y)
        if i >= 3:
            times.append(elapsed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_mem = (peak - rss_before) / 1024
    if device.type == "cuda":
        train_mem = (torch.cuda.max_memory_allocated(device) - allocated_before) / 2**20
    return {"params": rep.params, "flops": rep.flops, "step_ms": 1e3 * statistics.median(times),
            "train_mem_mb": train_mem, "peak_rss_mb": peak / 1024}


def paired(spec: str, sparsity: float, steps: int, batch: int, threads: int, device: str = "cpu") -> dict:
    """Shrunk vs natively narrow in one process, steps interleaved (order alternating): median time ratio."""
    import copy

    torch.set_num_threads(threads)
    device = torch.device(device)
    shrunk = build(spec, sparsity, "shrunk")
    native = rebuilt_from_scratch(copy.deepcopy(shrunk)).to(device)
    shrunk.to(device)
    x = torch.randn(batch, *shrunk.input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    runs = []
    for model in (shrunk, native):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        runs.append((model, optimizer))

    ratios = []
    for i in range(steps + 3):
        order = runs if i % 2 == 0 else runs[::-1]
        times = {id(m): timed_step(m, o, x, y) for m, o in order}
        if i >= 3:
            ratios.append(times[id(shrunk)] / times[id(native)])
    return {"ratio": statistics.median(ratios)}


def run_isolated(spec: str, sparsity: float, variant: str, args) -> dict:
    if variant == "paired":
        call = f"paired({spec!r}, {sparsity}, {args.steps}, {args.batch}, {args.threads}, {args.device!r})"
    else:
        call = f"measure({spec!r}, {sparsity}, {variant!r}, {args.steps}, {args.batch}, {args.threads}, {args.device!r})"
    code = (f"import json, sys; sys.path.insert(0, 'benchmarks'); from bench_structured import measure, paired; "
            f"print(json.dumps({call}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16:0.25"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU threads"
    print(f"torch {torch.__version__}, {where}, batch {args.batch}, median of {args.steps} steps")
    header = (f"{'model':<12}{'removed':>8}{'variant':>9}{'params':>11}{'FLOPs x':>9}{'ms/step':>9}"
              f"{'speedup':>9}{'% ideal':>9}{'train MB':>10}{'vs native':>11}")
    print(header)
    for spec in args.models:
        dense = run_isolated(spec, 0.0, "dense", args)
        print(f"{spec:<12}{'0%':>8}{'dense':>9}{dense['params']:>11,}{1.0:>9.1f}{dense['step_ms']:>9.1f}"
              f"{1.0:>9.2f}{'':>9}{dense['train_mem_mb']:>10.0f}", flush=True)
        for sparsity in args.sparsities:
            results = {variant: run_isolated(spec, sparsity, variant, args) for variant in ("shrunk", "native")}
            ratio = run_isolated(spec, sparsity, "paired", args)["ratio"]
            for variant, r in results.items():
                ideal = dense["flops"] / r["flops"]
                speedup = dense["step_ms"] / r["step_ms"]
                versus = f"{ratio:>11.2f}" if variant == "shrunk" else ""
                print(f"{spec:<12}{sparsity:>8.0%}{variant:>9}{r['params']:>11,}{ideal:>9.1f}{r['step_ms']:>9.1f}"
                      f"{speedup:>9.2f}{100 * speedup / ideal:>8.0f}%{r['train_mem_mb']:>10.0f}{versus}", flush=True)


if __name__ == "__main__":
    main()
