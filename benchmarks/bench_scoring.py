"""Cost of scoring per method, in units of one dense forward+backward on the same batch, interleaved.

Each repeat runs every variant once, in turn (so load drift hits them alike), and the table gives the
median over the repeats. Besides the library's routes it times the plain routes they replaced, on the
same model and batch: ``grasp (two-pass)`` / ``crop (two-pass)`` recompute the gradient's graph for the
Hessian-gradient product (the official GraSP code's construction), ``prospr (PyTorch's BatchNorm
derivative)`` is ProsPr without the fused BatchNorm second derivative, ``synflow x100 (per-round calls)``
is one scoring call and one selection per round; ``100 bare fwd+bwd of one example`` is the floor of
SynFlow's 100 rounds (their passes without scoring or selection), on the process's threads and on the
one thread the in-place rounds use on a CPU. Scoring memory: peak resident memory growth of one
call of each method, measured in a fresh subprocess per method (``--memory``).

Usage: python benchmarks/bench_scoring.py [--threads 2] [--models lenet5 resnet20] [--repeats 5] [--memory]
       [--allocator system|tuned]
Data are random tensors of the right shape: these are timings, not accuracies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import earlyprune as ep
from earlyprune import models
from earlyprune.criteria import compute_importance
from earlyprune.criteria._autograd import hessian_gradient_product, loss_gradient
from earlyprune.loss import default_loss
from earlyprune.model_state import isolated
from earlyprune.prunable import prunable_parameters
from earlyprune.schedules import schedule_targets
from earlyprune.selection import reshape_like, select

BATCH = {"lenet5": 100, "resnet20": 128, "vgg16": 128}
METHODS = ["snip", "grasp", "crop", "prospr", "synflow"]


def two_pass(model, x, y, temperature: float, absolute: bool):
    """GraSP/CroP by the plain route: g, then a second forward+backward with the graph for Hg."""
    params = prunable_parameters(model)
    with isolated(model, train=True, seed=0):
        g = loss_gradient(model, params, [(x, y)], default_loss, temperature)
        hg = hessian_gradient_product(model, params, [(x, y)], g, default_loss, temperature)
        scores = {n: p.detach() * hg[n] for n, p in params.items()}
    return {n: s.abs() for n, s in scores.items()} if absolute else scores


def prospr_native_batchnorm(model, x, y):
    """ProsPr's meta-gradient as the library computes it, but with PyTorch's own BatchNorm second
    derivative (the official code's), to see what the fused one saves in the same run."""
    from earlyprune.criteria.prospr import DEFAULT_INNER_LR, DEFAULT_STEPS, _meta_gradient

    with isolated(model, train=True, seed=0):
        return _meta_gradient(model, prunable_parameters(model), [(x, y)], default_loss, None, DEFAULT_STEPS,
                              DEFAULT_INNER_LR, False)


def synflow_per_round_calls(model, sparsity: float = 0.98, iterations: int = 100):
    """SynFlow's 100 rounds as 100 independent scoring calls (the route before the in-place rounds)."""
    params = prunable_parameters(model)
    current = None
    for index, target in enumerate(schedule_targets(sparsity, None, iterations)):
        importance = compute_importance(model, "synflow", params, None, masks=current, seed=index)
        flat, _ = select(importance, target, current=current, on_collapse="allow")
        current = reshape_like(flat, params)
        with torch.no_grad():
            for name, param in params.items():
                param.mul_(current[name])
    return current


def variants(name: str, x, y, calls: int) -> dict:
    """The timed calls; each of ``calls`` calls of the SynFlow prunes gets a fresh model built beforehand
    (building one is not SynFlow's cost: 22 ms for LeNet-5 here, about 0.7 units)."""
    model = models.create(name)
    fresh = {label: [models.create(name) for _ in range(calls)] for label in ("prune", "per-round")}

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    fns = {"dense fwd+bwd": fwd_bwd}
    for method in METHODS:
        fns[method] = (lambda m=method: ep.score(model, m, (x, y)))
    fns["grasp (two-pass)"] = lambda: two_pass(model, x, y, 200.0, absolute=False)
    fns["crop (two-pass)"] = lambda: two_pass(model, x, y, 1.0, absolute=True)
    fns["prospr (PyTorch's BatchNorm derivative)"] = lambda: prospr_native_batchnorm(model, x, y)
    fns["synflow x100 (prune)"] = lambda: ep.prune(fresh["prune"].pop(), "synflow", 0.98, on_collapse="allow")
    fns["synflow x100 (per-round calls)"] = lambda: synflow_per_round_calls(fresh["per-round"].pop())
    ones = torch.ones(1, *x.shape[1:])

    def bare_rounds():  # the floor of any 100-round SynFlow: its forward and backward passes alone
        model.eval()  # as SynFlow scores
        for _ in range(100):
            model.zero_grad(set_to_none=True)
            model(ones).sum().backward()
        model.train()

    fns["100 bare fwd+bwd of one example"] = bare_rounds

    def bare_rounds_one_thread():  # as the in-place rounds run them on a CPU
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            bare_rounds()
        finally:
            torch.set_num_threads(threads)

    fns["the same, on one thread"] = bare_rounds_one_thread
    return fns


def bench(name: str, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = torch.randn(BATCH[name], *models.input_shape(name)), torch.arange(BATCH[name]) % 10
    fns = variants(name, x, y, calls=repeats + 1)
    for fn in fns.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def memory_of(name: str, method: str, tuned: bool = False) -> float:
    """Peak resident memory growth (MiB) of one scoring call, in a fresh interpreter (Linux).

    The peak is the kernel's VmHWM, reset just before the call (``/proc/self/clear_refs``): ru_maxrss
    would not do, since a child started from a large parent process inherits the parent's peak.
    """
    code = f"""
import torch, earlyprune as ep
from earlyprune import models
{"ep.tune_cpu_allocator()" if tuned else ""}
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
torch.manual_seed(0)
x, y = torch.randn({BATCH[name]}, *models.input_shape({name!r})), torch.arange({BATCH[name]}) % 10
m = models.create({name!r})
import torch.nn.functional as F
F.cross_entropy(m(x), y).backward(); m.zero_grad(set_to_none=True)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak resident size to the current one
base = status("VmRSS")
{"ep.score(m, " + repr(method) + ", (x, y))" if method != "dense" else "F.cross_entropy(m(x), y).backward()"}
print((status("VmHWM") - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="also peak RSS growth per method (subprocesses)")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--allocator", choices=("system", "tuned"), default="system",
                        help="tuned: earlyprune.tune_cpu_allocator() first (as earlyprune run does); system: "
                             "the C library's defaults (default; benchmarks/bench_allocator.py compares the two)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = ep.tune_cpu_allocator() if args.allocator == "tuned" else "system default"
    print(f"torch {torch.__version__}, {args.threads} threads, allocator: {allocator}")
    results = {}
    for name in args.models:
        times = bench(name, args.repeats)
        base = times["dense fwd+bwd"]
        print(f"\n{name}, batch {BATCH[name]}: one scoring call (median of {args.repeats}, interleaved)")
        print(f"{'method':<42}{'ms':>10}{'units':>8}")
        for k, v in times.items():
            print(f"{k:<42}{v * 1e3:>10.1f}{v / base:>8.2f}")
        results[name] = {"ms": {k: v * 1e3 for k, v in times.items()}, "units": {k: v / base for k, v in times.items()}}
        if args.memory:
            mem = {m: memory_of(name, m, args.allocator == "tuned") for m in ["dense", *METHODS]}
            print(f"{name}: peak RSS growth of one call (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()))
            results[name]["peak_rss_growth_mib"] = mem
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
