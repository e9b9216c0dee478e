"""The same 24-cell sweep (tiny cells) with the local executor and on a local Ray instance, interleaved.

    .venv/bin/python benchmarks/sweep_executors.py [--rounds 2]

Cells: LeNet-300-100 at width 0.25 on the embedded MNIST sample (300 training images), 1 epoch;
random/magnitude/SNIP x 4 sparsities x 2 seeds. Both executors run two cells at a time with one CPU
(and one torch thread) each: ``--jobs 2`` locally, ``num_cpus = 1`` on a Ray instance of 2 CPUs that
the sweep starts and stops itself (as ``earlyprune sweep --executor ray`` without ``--address`` does).
Every run writes a fresh store. Prints each run's wall time, and per executor the median; the Ray
overhead per cell is (median Ray wall - median local wall) / 24.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """results = "{results}"

[recipe]
epochs = 1
batch_size = 100
train_subset = 300
width = 0.25

[grid]
datasets = ["mnist-sample"]
models = ["lenet300"]
methods = ["random", "magnitude", "snip"]
sparsities = [0.5, 0.8, 0.9, 0.95]
seeds = [0, 1]

[resources]
num_cpus = 1
"""


def one_run(executor: str, workdir: Path, index: int) -> float:
    from earlyprune.experiments.sweep import load_sweep, run_sweep

    results = workdir / f"{executor}-{index}"
    config = workdir / f"{executor}-{index}.toml"
    config.write_text(SWEEP.format(results=results))
    assert len(load_sweep(config)[0]) == 24
    start = time.perf_counter()
    code = run_sweep(config, executor=executor, jobs=2 if executor == "local" else 1, device="cpu")
    seconds = time.perf_counter() - start
    assert code == 0, f"{executor} sweep failed"
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ep-bench-sweep-"))
    os.environ.setdefault("RAY_TMPDIR", str(workdir))  # Ray's session files stay in this run's folder
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for index in range(args.rounds):
        for executor in ("local", "ray"):
            seconds = one_run(executor, workdir, index)
            times[executor].append(seconds)
            print(f"round {index}: {executor}: {seconds:.1f} s", file=sys.stderr, flush=True)
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    print(f"local --jobs 2: {', '.join(f'{t:.1f}' for t in times['local'])} s (median {local:.1f} s)")
    print(f"ray (2 CPUs, num_cpus=1): {', '.join(f'{t:.1f}' for t in times['ray'])} s (median {ray:.1f} s)")
    print(f"ray / local: {ray / local:.2f}x; Ray overhead per cell: {(ray - local) / 24:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
