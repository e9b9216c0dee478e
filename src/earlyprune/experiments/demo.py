"""``earlyprune demo``: every method at 98% sparsity on LeNet-5 and the embedded MNIST sample.

No arguments and no data needed; about two minutes on two CPU cores. Prints a comparison table and
writes ``demo.png`` (test accuracy per method) and ``demo.jsonl`` (the full records) to the out folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import DENSE, RunConfig
from .records import append_record
from .run import run_experiment

DEMO_METHODS = [DENSE, "random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"]
DEMO_SPARSITY = 0.98


def run_demo(out_dir: Path = Path("demo"), epochs: int = 3, threads: int | None = None) -> list[dict[str, Any]]:
    """Run the comparison, print the table, write the plot and records; return the records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "demo.jsonl"
    partial = out_dir / ".demo.jsonl.partial"
    partial.unlink(missing_ok=True)
    records = []
    print(f"LeNet-5 on the embedded MNIST sample (6,000 train / 1,000 test), {DEMO_SPARSITY:.0%} sparsity, "
          f"{epochs} epochs each\n")
    print(_header())
    for method in DEMO_METHODS:
        config = RunConfig(
            dataset="mnist-sample", model="lenet5", method=method, sparsity=DEMO_SPARSITY, epochs=epochs,
            batch_size=100, lr=0.1, seed=0,
        )
        record = run_experiment(config, threads=threads, progress=False)
        append_record(partial, record)
        records.append(record)
        print(_row(record), flush=True)
    os.replace(partial, records_path)
    plot = out_dir / "demo.png"
    _plot(records, plot)
    print(f"\nrecords: {records_path}\nplot:    {plot}")
    return records


def _header() -> str:
    return (f"{'method':<10}{'test acc':>9}{'non-zero':>10}{'eff. FLOPs':>12}{'score s':>9}{'train s':>9}\n"
            + "-" * 59)


def _row(r: dict[str, Any]) -> str:
    flops = r["effective_flops"] or 0
    return (f"{r['method']:<10}{r['final_accuracy']:>9.2%}{r['nonzero_params']:>10,}"
            f"{flops / 1e6:>11.2f}M{r['scoring_seconds']:>9.2f}{r['train_seconds']:>9.1f}")


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in records]
    accuracy = [100 * r["final_accuracy"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    colors = ["#777777" if n == DENSE else "#3b6fb6" for n in names]
    bars = ax.bar(names, accuracy, color=colors)
    for bar, value in zip(bars, accuracy):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.5, f"{value:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"LeNet-5 on the MNIST sample, {DEMO_SPARSITY:.0%} of weights pruned at initialisation")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
