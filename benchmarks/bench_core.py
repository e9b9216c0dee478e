"""Cost of masking and of scoring, measured side by side in one process.

1. Training-step time of a masked model (gradient hooks; and with the optimizer attached) relative to
   the same dense model: blocks of steps alternate between the variants so drift hits all equally.
2. Time of one scoring call per method relative to one dense forward+backward on the same batch.
3. Training-step time with activation-density hooks attached (counting non-zero ReLU outputs per
   channel) relative to the same model without them.

Usage: python benchmarks/bench_core.py [--threads 2] [--models lenet5 resnet20] [--parts masking scoring density]
Data are random tensors of the right shape: these are timings, not accuracies.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import earlyprune as ep
from earlyprune import models

METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"]
BATCH = {"lenet5": 100, "resnet20": 128}


def step_fn(model, optimizer, x, y):
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def interleaved_median(fns: dict, blocks: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each fn, measured in alternating blocks after a warm-up."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            samples[name].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_masking(name: str, blocks: int, steps: int) -> None:
    torch.manual_seed(0)
    shape = models.input_shape(name)
    x, y = torch.randn(BATCH[name], *shape), torch.randint(0, 10, (BATCH[name],))
    dense = models.create(name)
    hooked = models.create(name)
    attached = models.create(name)
    opt = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
           for k, m in [("dense", dense), ("hooked", hooked), ("attached", attached)]}
    ep.prune(hooked, "random", 0.9)
    ep.prune(attached, "random", 0.9, optimizer=opt["attached"])
    times = interleaved_median(
        {
            "dense": step_fn(dense, opt["dense"], x, y),
            "masked": step_fn(hooked, opt["hooked"], x, y),
            "masked+optimizer": step_fn(attached, opt["attached"], x, y),
        },
        blocks, steps,
    )
    print(f"\n{name}, batch {BATCH[name]}: training step (median of {blocks} blocks of {steps})")
    print(f"{'variant':<18}{'ms/step':>10}{'ratio':>8}")
    for k, v in times.items():
        print(f"{k:<18}{v * 1e3:>10.2f}{v / times['dense']:>8.3f}")


def bench_density_hooks(name: str, blocks: int, steps: int) -> None:
    torch.manual_seed(0)
    shape = models.input_shape(name)
    x, y = torch.randn(BATCH[name], *shape), torch.randint(0, 10, (BATCH[name],))
    plain, hooked = models.create(name), models.create(name)
    opt = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in [("plain", plain), ("hooked", hooked)]}
    ep.ActivationDensityPruner(hooked, x[:1], optimizer=opt["hooked"])  # hooks stay on the model
    times = interleaved_median(
        {"no hooks": step_fn(plain, opt["plain"], x, y), "density hooks": step_fn(hooked, opt["hooked"], x, y)},
        blocks, steps,
    )
    print(f"\n{name}, batch {BATCH[name]}: activation-density hooks (median of {blocks} blocks of {steps})")
    print(f"{'variant':<18}{'ms/step':>10}{'ratio':>8}")
    for k, v in times.items():
        print(f"{k:<18}{v * 1e3:>10.2f}{v / times['no hooks']:>8.3f}")


def bench_scoring(name: str, repeats: int) -> None:
    torch.manual_seed(0)
    shape = models.input_shape(name)
    x, y = torch.randn(BATCH[name], *shape), torch.arange(BATCH[name]) % 10
    model = models.create(name)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    fns = {"dense fwd+bwd": fwd_bwd}
    for method in METHODS:
        fns[method] = (lambda m=method: ep.score(model, m, (x, y)))
    fns["synflow x100 (prune)"] = lambda: ep.prune(models.create(name), "synflow", 0.98, on_collapse="allow")
    results = {}
    for label, fn in fns.items():
        fn()  # warm-up
        runs = []
        for _ in range(repeats if "x100" not in label else 1):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        results[label] = statistics.median(runs)
    base = results["dense fwd+bwd"]
    print(f"\n{name}, batch {BATCH[name]}: one scoring call (median of {repeats})")
    print(f"{'method':<22}{'ms':>10}{'x fwd+bwd':>11}")
    for k, v in results.items():
        print(f"{k:<22}{v * 1e3:>10.1f}{v / base:>11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", nargs="+", default=["masking", "scoring", "density"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    for name in args.models:
        if "masking" in args.parts:
            bench_masking(name, args.blocks, args.steps)
        if "scoring" in args.parts:
            bench_scoring(name, args.repeats)
        if "density" in args.parts:
            bench_density_hooks(name, args.blocks, args.steps)


if __name__ == "__main__":
    main()
