"""glibc's default malloc against earlyprune.tune_cpu_allocator(), in fresh processes taken in turn.

The allocator's setting is process-wide and cannot be undone, so the two cannot share one process: each
round runs every workload once with the system default (``EARLYPRUNE_MALLOC=system``) and once tuned,
alternating which goes first, and the table gives the medians over the rounds with their ratio.

Workloads (ResNet-20 and LeNet-5 on a random batch: timings, not accuracies):
* ``scoring``: ``bench_scoring.py --models resnet20 --repeats 3`` as a whole (a long-lived process that
  runs every method in turn, as a sweep worker does); its units per method.
* ``training``: 30 eager SGD steps of each model (after 3 warm-up steps): median step time, and the
  growth of the peak resident memory over those steps.

Usage: python benchmarks/bench_allocator.py [--rounds 2] [--threads 2] [--parts scoring training]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_TRAINING = """
import json, statistics, sys, time
import torch, torch.nn.functional as F
import earlyprune as ep
from earlyprune import models
torch.set_num_threads({threads})
said = ep.tune_cpu_allocator()
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024
out = {{"allocator": said}}
for name, batch in (("resnet20", 128), ("lenet5", 100)):
    torch.manual_seed(0)
    model = models.create(name)
    x, y = torch.randn(batch, *models.input_shape(name)), torch.arange(batch) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for _ in range(3):
        step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    times = []
    for _ in range(30):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out[name] = {{"step_ms": 1e3 * statistics.median(times), "peak_growth_mib": status("VmHWM") - base}}
print(json.dumps(out))
"""


def _environment(allocator: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["EARLYPRUNE_MALLOC"] = "system" if allocator == "system" else "tuned"
    return env


def scoring(allocator: str, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "scores.json"
        subprocess.run([sys.executable, str(HERE / "bench_scoring.py"), "--models", "resnet20", "--repeats", "3",
                        "--threads", str(threads), "--allocator", allocator, "--json", str(result)],
                       env=_environment(allocator), check=True, capture_output=True, text=True)
        units = json.loads(result.read_text())["resnet20"]["units"]
    return {f"resnet20 {k} (units)": v for k, v in units.items() if k != "dense fwd+bwd"}


def training(allocator: str, threads: int) -> dict[str, float]:
    code = _TRAINING.format(threads=threads)
    if allocator == "system":
        code = code.replace("said = ep.tune_cpu_allocator()", "said = 'system default'")
    out = subprocess.run([sys.executable, "-c", code], env=_environment(allocator), check=True,
                         capture_output=True, text=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {}
    for name in ("resnet20", "lenet5"):
        rows[f"{name} training step (ms)"] = measured[name]["step_ms"]
        rows[f"{name} peak memory growth over 30 steps (MiB)"] = measured[name]["peak_growth_mib"]
    return rows


PARTS = {"scoring": scoring, "training": training}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {"system": {}, "tuned": {}}
    for round_ in range(args.rounds):
        order = ("system", "tuned") if round_ % 2 == 0 else ("tuned", "system")
        for part in args.parts:
            for allocator in order:
                for label, value in PARTS[part](allocator, args.threads).items():
                    samples[allocator].setdefault(label, []).append(value)
        print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr)
    print(f"medians of {args.rounds} rounds, {args.threads} threads; ratio = system / tuned")
    print(f"{'':<58}{'system':>10}{'tuned':>10}{'ratio':>8}")
    for label, values in samples["system"].items():
        system, tuned = statistics.median(values), statistics.median(samples["tuned"][label])
        ratio = f"{system / tuned:8.2f}" if tuned else ""
        print(f"{label:<58}{system:>10.2f}{tuned:>10.2f}{ratio}")


if __name__ == "__main__":
    main()
