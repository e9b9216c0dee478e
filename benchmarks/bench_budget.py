"""Pruning to a budget: the FLOPs a channel fraction costs with and without cost-aware selection, and the
memory-cap demonstration (EarlyCroP's claim that pruning at initialisation lets one train networks whose
dense versions do not fit).

1. ``--part flops``: for each model, the FLOPs ratio (dense / pruned) of CroP at 50% of the channels,
   ranked by importance (``sparsity=0.5``) and by importance per unit of FLOPs (``budget={"channels": 0.5}``),
   with random channels for reference; no training (random data of the right shape for the scores).
2. ``--part memory``: EarlyCroP's claim that one can train networks whose dense versions would not fit.
   ``--steps`` (3) SGD steps of ``--model`` (VGG-16 x0.5) at ``--batch`` (128) run in fresh processes (one
   thread) under ``resource.setrlimit``: RLIMIT_AS (address space) or RLIMIT_DATA (data segment) set to what
   the process holds just before its first step plus a cap C. For the dense model and for the model
   structurally pruned at initialisation (CroP to ``--budget``, e.g. ``flops=0.25`` or ``memory_mb=...``),
   bisection finds the smallest C under which every step succeeds; a C between the pruned model's smallest
   and the largest that failed the dense one is then tried on each in a fresh process: the dense training
   fails to allocate, the pruned one trains. (Peak virtual memory without a cap overstates what a step
   needs, as freed blocks are reused: a cap set from it does not separate them, which is why C is searched.)
   glibc's dynamic mmap threshold is fixed in those processes (``MALLOC_ENV``) so that freed large blocks
   return to the system at once. This measures memory, not time.

Usage: python benchmarks/bench_budget.py [--part flops memory] [--models lenet5 resnet20 vgg16:0.25]
       python benchmarks/bench_budget.py --part memory [--model vgg16:0.5 --batch 128 --budget flops=0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import torch

import earlyprune as ep
from earlyprune import models
from earlyprune.metrics import report


def create(spec: str):
    name, _, width = spec.partition(":")
    return models.create(name, width=float(width)) if width else models.create(name)


def flops_part(specs: list[str]) -> None:
    print(f"{'model':<14}{'selection':<34}{'FLOPs ratio':>12}{'params ratio':>14}")
    for spec in specs:
        name = spec.partition(":")[0]
        torch.manual_seed(0)
        x, y = torch.randn(64, *models.input_shape(name)), torch.arange(64) % 10
        dense = create(spec)
        dense_flops, dense_params = report(dense).flops, report(dense).params
        for label, kwargs, method in [("random, 50% channels", {"sparsity": 0.5}, "random"),
                                      ("crop, 50% channels", {"sparsity": 0.5}, "crop"),
                                      ("crop per FLOP, 50% channels", {"budget": {"channels": 0.5}}, "crop"),
                                      ("crop to 25% of the FLOPs", {"budget": {"flops": 0.25}}, "crop")]:
            torch.manual_seed(0)
            model = create(spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep.prune_channels(model, method, data=(x, y), **kwargs)
            r = report(model)
            print(f"{spec:<14}{label:<34}{dense_flops / r.flops:>12.2f}{dense_params / r.params:>14.2f}")


STEP = """
import json, resource, sys, torch
from earlyprune import models
from earlyprune.structured.saving import load_shrunk
limit_name, cap, variant, spec, batch, steps, path = sys.argv[1:8]
cap, batch, steps = float(cap), int(batch), int(steps)
torch.set_num_threads(1)
torch.manual_seed(0)
name, _, width = spec.partition(":")
model = load_shrunk(path).train() if variant == "pruned" else models.create(name, width=float(width or 1))
x, y = torch.randn(batch, 3, 32, 32), torch.arange(batch) % 10
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss = torch.nn.functional.cross_entropy
loss(model(x[:2]), y[:2]).backward()  # warm-up on 2 examples: thread pools, kernels' first-use state
opt.zero_grad(set_to_none=True)
def status(key):
    return int([l for l in open("/proc/self/status") if l.startswith(key + ":")][0].split()[1]) / 1024
kind = {"as": resource.RLIMIT_AS, "data": resource.RLIMIT_DATA}[limit_name]
before = status({"as": "VmSize", "data": "VmData"}[limit_name])
vm_before, rss_before = status("VmSize"), status("VmRSS")
soft, hard = resource.getrlimit(kind)
if cap >= 0:  # this much more address space (or data segment) than the process holds now
    resource.setrlimit(kind, (int((before + cap) * 2**20), hard))
done, outcome = 0, "trained"
try:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        opt.step()
        done += 1
except (MemoryError, RuntimeError) as error:
    text = str(error)
    text = text[text.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in text else text.strip()
    outcome = "failed: " + type(error).__name__ + ": " + text.splitlines()[0][:120]
resource.setrlimit(kind, (soft, hard))  # room again to report
print(json.dumps({"outcome": outcome, "steps": done, "vm_growth_mb": status("VmPeak") - vm_before,
                  "rss_growth_mb": status("VmHWM") - rss_before}))
"""

#: glibc's dynamic mmap threshold fixed: a freed large block goes back to the system at once instead of
#: staying in the heap, so the address space a step grows by follows the memory it holds live.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}


def run_steps(limit: str, cap: float, variant: str, spec: str, batch: int, steps: int, path: str) -> dict:
    """K training steps of ``variant`` in a fresh process whose ``limit`` (``as``: RLIMIT_AS, ``data``:
    RLIMIT_DATA) allows ``cap`` MiB beyond what it holds just before its first step (``cap < 0``: no cap)."""
    env = {**os.environ, **MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", STEP, limit, str(cap), variant, spec, str(batch), str(steps), path],
                         capture_output=True, text=True, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        tail = (out.stderr.strip().splitlines() or [""])[-1][:110]
        return {"outcome": f"process died (rc {out.returncode}): {tail}", "steps": 0}
    return json.loads(lines[-1])


def smallest_cap(limit: str, variant: str, spec: str, batch: int, steps: int, path: str, tolerance: float
                 ) -> dict:
    """By bisection in fresh processes: the smallest cap (MiB beyond what the process holds before its
    steps) under which ``steps`` consecutive training steps succeed, and the largest tried that failed."""
    free = run_steps(limit, -1, variant, spec, batch, steps, path)
    if free["outcome"] != "trained":
        raise SystemExit(f"{variant} does not train even without a cap: {free['outcome']}")
    high, low, probes = max(8.0, free["vm_growth_mb"]), 0.0, 1
    while run_steps(limit, high, variant, spec, batch, steps, path)["outcome"] != "trained":
        low, high, probes = high, 2 * high, probes + 1
    probes += 1
    while high - low > max(tolerance, 0.01 * high):
        middle = (low + high) / 2
        probes += 1
        if run_steps(limit, middle, variant, spec, batch, steps, path)["outcome"] == "trained":
            high = middle
        else:
            low = middle
    return {"free": free, "smallest": high, "largest_failing": low, "probes": probes}


def memory_part(spec: str, batch: int, budget: str, steps: int, limits: list[str], tolerance: float) -> None:
    from earlyprune.experiments.config import parse_budget
    from earlyprune.structured.saving import save_shrunk

    kind, value = parse_budget(budget)
    torch.manual_seed(0)
    name, _, width = spec.partition(":")
    model = create(spec)
    x, y = torch.randn(64, 3, 32, 32), torch.arange(64) % 10  # random inputs: memory does not depend on them
    dense = report(model, input_shape=(3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ep.prune_channels(model, "crop", data=(x, y), budget={kind: value, **(
            {"batch_size": batch} if kind == "memory_mb" else {})})
    pruned = report(model, input_shape=(3, 32, 32))
    print(f"{spec}, batch {batch}, {steps} SGD steps (momentum) per process, 1 thread; pruned: CroP at init to "
          f"{budget} ({pruned.params / dense.params:.3f} of the parameters, {pruned.flops / dense.flops:.3f} of the "
          f"FLOPs; the budget's estimate: {result.info['budget']['estimated_ratio_of_dense']:.3f} of the dense)")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pruned.pt")
        save_shrunk(model, path, create={"name": name, "width": float(width or 1)})
        for limit in limits:
            start = time.perf_counter()
            found = {v: smallest_cap(limit, v, spec, batch, steps, path, tolerance) for v in ("dense", "pruned")}
            gap_low, gap_high = found["pruned"]["smallest"], found["dense"]["largest_failing"]
            what = {"as": "RLIMIT_AS (address space)", "data": "RLIMIT_DATA (data segment)"}[limit]
            print(f"\n{what}: cap = what the process holds just before its first step + C MiB")
            print(f"| variant | no cap: VmPeak growth | no cap: peak RSS growth | smallest C that trains {steps} "
                  f"steps | largest C tried that fails | probes |")
            print("| --- | --- | --- | --- | --- | --- |")
            for v, f in found.items():
                print(f"| {v} | {f['free']['vm_growth_mb']:.0f} MiB | {f['free']['rss_growth_mb']:.0f} MiB | "
                      f"{f['smallest']:.0f} MiB | {f['largest_failing']:.0f} MiB | {f['probes']} |")
            if gap_low >= gap_high:
                print(f"no cap separates them: the pruned model needs {gap_low:.0f} MiB, the dense one trains with "
                      f"{found['dense']['smallest']:.0f} MiB")
                continue
            cap = (gap_low + gap_high) / 2
            print(f"chosen C = {cap:.0f} MiB (between the pruned model's smallest and the dense one's largest "
                  f"failing), each in a fresh process:")
            for v in ("dense", "pruned"):
                r = run_steps(limit, cap, v, spec, batch, steps, path)
                print(f"  {v:<7} {r['steps']} of {steps} steps; {r['outcome']}")
            print(f"({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["flops", "memory"])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "vgg16:0.25"])
    parser.add_argument("--model", default="vgg16:0.5", help="the memory part's model (NAME or NAME:WIDTH)")
    parser.add_argument("--batch", type=int, default=128, help="the memory part's batch size")
    parser.add_argument("--budget", default="flops=0.25", help="the pruned model's budget (memory part): "
                        "KIND=NUMBER as earlyprune run --budget (memory_mb at --batch)")
    parser.add_argument("--steps", type=int, default=3, help="training steps each process must complete")
    parser.add_argument("--limits", nargs="+", default=["as", "data"], choices=("as", "data"),
                        help="the rlimit capped: RLIMIT_AS, RLIMIT_DATA, or both in turn")
    parser.add_argument("--tolerance", type=float, default=4.0, help="bisection resolution in MiB (or 1%%)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "flops" in args.part:
        flops_part(args.models)
    if "memory" in args.part:
        memory_part(args.model, args.batch, args.budget, args.steps, args.limits, args.tolerance)


if __name__ == "__main__":
    main()
