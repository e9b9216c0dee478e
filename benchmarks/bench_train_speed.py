"""Training-step time eager vs compiled (torch.compile) and with bf16 autocast, dense and after a
structured prune, interleaved in one process; compile time reported separately.

For each model: the dense model and a copy structurally pruned at initialisation (CroP, 50% of the
channels) each get an eager step, a compiled step (``earlyprune.acceleration.StepModel``, as ``train``
uses it) and, where the processor has bf16, an eager bf16-autocast step. The first compiled call (the
compilation) is timed on its own; then blocks of steps alternate between the variants and the median of
each is reported, with its ratio to the eager step of the same model.

Usage: python benchmarks/bench_train_speed.py [--models lenet5 resnet20 vgg16:0.25] [--blocks 5] [--steps 5]
Data are random tensors of the right shape: these are timings, not accuracies.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import earlyprune as ep
from earlyprune import models
from earlyprune.acceleration import StepModel, autocast, bf16_supported

BATCH = {"lenet5": 100, "resnet20": 128, "vgg16": 128}


def create(spec: str):
    name, _, width = spec.partition(":")
    return models.create(name, width=float(width)) if width else models.create(name)


def step_fn(forward, model, x, y, amp=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(amp, torch.device("cpu")):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()

    return step


def bench(spec: str, blocks: int, steps: int) -> None:
    name = spec.partition(":")[0]
    torch.manual_seed(0)
    x, y = torch.randn(BATCH[name], *models.input_shape(name)), torch.arange(BATCH[name]) % 10
    variants = {}
    compile_seconds = {}
    for state in ("dense", "pruned"):
        model = create(spec)
        if state == "pruned":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep.prune_channels(model, "crop", 0.5, data=(x[:32], y[:32]))
        model.train()
        variants[f"{state} eager"] = step_fn(model, model, x, y)
        compiled = StepModel(model, compile=True).use(model)
        fn = step_fn(compiled, model, x, y)
        start = time.perf_counter()
        fn()  # the compilation (forward and backward graphs)
        compile_seconds[state] = time.perf_counter() - start
        variants[f"{state} compiled"] = fn
        if bf16_supported(torch.device("cpu")):
            variants[f"{state} bf16"] = step_fn(model, model, x, y, amp="bf16")
    for fn in variants.values():
        for _ in range(2):
            fn()
    samples = {k: [] for k in variants}
    for _ in range(blocks):
        for label, fn in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            samples[label].append((time.perf_counter() - start) / steps)
    times = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\n{spec}, batch {BATCH[name]}: training step (median of {blocks} blocks of {steps}); compile time "
          + ", ".join(f"{k} {v:.1f} s" for k, v in compile_seconds.items()))
    print(f"{'variant':<18}{'ms/step':>10}{'vs eager':>10}")
    for label, value in times.items():
        eager = times[label.split()[0] + " eager"]
        print(f"{label:<18}{value * 1e3:>10.1f}{eager / value:>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "vgg16:0.25"])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, bf16 on this CPU: {bf16_supported(torch.device('cpu'))}")
    for spec in args.models:
        bench(spec, args.blocks, args.steps)


if __name__ == "__main__":
    main()
