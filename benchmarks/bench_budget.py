"""Pruning to a budget: the FLOPs a channel fraction costs with and without cost-aware selection, and the
memory-cap demonstration (EarlyCroP's claim that pruning at initialisation lets one train networks whose
dense versions do not fit).

1. ``--part flops``: for each model, the FLOPs ratio (dense / pruned) of CroP at 50% of the channels,
   ranked by importance (``sparsity=0.5``) and by importance per unit of FLOPs (``budget={"channels": 0.5}``),
   with random channels for reference; no training (random data of the right shape for the scores).
2. ``--part memory``: one training step of VGG-16 at a batch size, in subprocesses. How much each
   variant's step grows the address space is measured first without a cap; then each runs again with
   ``resource.setrlimit(RLIMIT_AS)`` allowing, beyond what the process holds before its step, halfway
   between the two growths: the dense step should fail, the model structurally pruned at initialisation
   (CroP to ``--flops`` of the dense FLOPs) train.

Usage: python benchmarks/bench_budget.py [--part flops memory] [--models lenet5 resnet20 vgg16:0.25]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
import json, resource, sys, torch, warnings
import earlyprune as ep
from earlyprune import models
warnings.simplefilter("ignore")
cap, variant, batch, flops = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(1)
torch.manual_seed(0)
model = models.create("vgg16")
x, y = torch.randn(batch, 3, 32, 32), torch.arange(batch) % 10
if variant == "pruned":
    ep.prune_channels(model, "crop", data=(x[:32], y[:32]), budget={"flops": flops})
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
def vm(key):
    return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1]) / 1024
before = vm("VmSize")
if cap > 0:  # the cap allows this much more address space than the process holds now
    limit = int((before + cap) * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    status = "trained"
except (MemoryError, RuntimeError) as error:
    status = "failed: " + type(error).__name__ + ": " + str(error).splitlines()[0][:120]
print(json.dumps({"variant": variant, "status": status, "step_growth_mb": vm("VmPeak") - before}))
"""


def run_step(cap: float, variant: str, batch: int, flops: float) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, str(cap), variant, str(batch), str(flops)],
                         capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return {"variant": variant, "status": f"process died (rc {out.returncode}): {out.stderr.strip()[-200:]}"}
    return json.loads(lines[-1])


def memory_part(batch: int, flops: float) -> None:
    free = {v: run_step(0, v, batch, flops) for v in ("dense", "pruned")}
    for v, r in free.items():
        print(f"no cap: {v:<7} {r['status']:<10} the step grew the address space by {r['step_growth_mb']:.0f} MiB")
    cap_mb = (free["dense"]["step_growth_mb"] + free["pruned"]["step_growth_mb"]) / 2
    print(f"cap: RLIMIT_AS = the address space before the step + {cap_mb:.0f} MiB (halfway between the two "
          f"steps' growth), VGG-16, batch {batch}, one SGD step")
    for v in ("dense", "pruned"):
        r = run_step(cap_mb * 2**20, v, batch, flops)
        print(f"capped: {v:<7} {r['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["flops", "memory"])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "vgg16:0.25"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--flops", type=float, default=0.25, help="the pruned model's FLOPs budget (memory part)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "flops" in args.part:
        flops_part(args.models)
    if "memory" in args.part:
        memory_part(args.batch, args.flops)


if __name__ == "__main__":
    main()
