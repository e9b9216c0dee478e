"""The reinforcement-learning table of BENCHMARKS.md from a results store's ``runs.jsonl``.

DQN's greedy return on CartPole swings by hundreds between consecutive epochs, so besides the last
epoch's return (the run's ``final_metric``, what ``earlyprune report`` shows) this prints the mean of the
last ``--last`` epochs' evaluation returns (``record["curve"]``), a steadier figure of where training
ended, and the best epoch. Each cell is the mean ± sample standard deviation over the seeds found.

Usage: python benchmarks/rl_table.py results/tasks/rl/runs.jsonl [--last 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict


def label(record: dict) -> str:
    """A row name: the method, when it pruned and how much."""
    method = record["method"]
    if method == "dense":
        return "dense"
    if method == "activation_density":
        return "activation density"
    kind = "structured " if record.get("structured") else ""
    when = "at init" if record.get("when") == "init" else record.get("when", "")
    return f"{method} {kind}{when}, {record['sparsity']:.0%}"


def spread(values: list[float], digits: int = 1) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="a results store's runs.jsonl")
    parser.add_argument("--last", type=int, default=5, help="epochs averaged for the 'last epochs' column")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = defaultdict(list)
    with open(args.runs, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                rows[label(record)].append(record)
    print(f"| method | seeds | weights kept | final return | mean of the last {args.last} epochs | best epoch "
          "| training GFLOPs | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, records in rows.items():
        tail = [statistics.fmean(point["test_metric"] for point in r["curve"][-args.last:]) for r in records]
        cells = [
            name,
            ", ".join(str(r["seed"]) for r in records),
            f"{round(statistics.fmean(r['nonzero_params'] for r in records)):,}",
            spread([r["final_metric"] for r in records]),
            spread(tail),
            spread([r["best_metric"] for r in records]),
            f"{statistics.fmean(r['training_flops'] for r in records) / 1e9:.0f}",
            f"{statistics.fmean(r['train_seconds'] for r in records):.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
