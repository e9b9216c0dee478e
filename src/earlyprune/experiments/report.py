"""``earlyprune report RESULTS_DIR``: Markdown tables (also printed) and PNG plots of a results store.

Tables: test accuracy mean ± std over seeds for every method × sparsity (per dataset, model and timing),
with the dense reference; parameters, FLOPs and time. Plots: accuracy against the fraction of weights
remaining (log axis, one line per method, error bars over seeds), accuracy against total training time,
and, for structured runs, accuracy against FLOPs.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .config import DENSE
from .store import ResultsStore


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _variant(record: dict[str, Any]) -> str:
    """The method as a line label: its name, and how/when it pruned when that is not 'at init'."""
    name = record["method"]
    if record.get("structured"):
        name += " (structured)"
    if record.get("when", "init") != "init" and record["method"] != DENSE:
        name += f" @{record['when']}"
    return name


# Methods whose size is an outcome, not a setting: their ``sparsity`` field is ignored (keyed as None).
_NO_TARGET = (DENSE, "activation_density")


def _target(record: dict[str, Any]) -> float | None:
    return None if record["method"] in _NO_TARGET else float(record["sparsity"])


def _ordered(by: dict[float | None, Any]) -> list[float | None]:
    return sorted(by, key=lambda s: -1.0 if s is None else s)


def summarise(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Group records by (dataset, model), then by variant and target sparsity (None for methods without
    one: dense, activation density), with mean and std over seeds."""
    grouped: dict[tuple[str, str], dict[str, dict[float, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in records:
        grouped[(r["dataset"], r["model"])][_variant(r)][_target(r)].append(r)
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for setting, variants in grouped.items():
        rows = {}
        for variant, by_sparsity in variants.items():
            rows[variant] = {}
            for sparsity in _ordered(by_sparsity):
                runs = by_sparsity[sparsity]
                acc = [100 * r["final_accuracy"] for r in runs if r.get("final_accuracy") is not None]
                rows[variant][sparsity] = {
                    "accuracy": _mean_std(acc) if acc else (float("nan"), 0.0),
                    "seeds": len(runs),
                    "nonzero_params": statistics.fmean(r["nonzero_params"] for r in runs),
                    "effective_flops": statistics.fmean((r.get("effective_flops") or 0) for r in runs),
                    "seconds": statistics.fmean(r.get("train_seconds", 0) + r.get("scoring_seconds", 0) for r in runs),
                    "achieved_sparsity": statistics.fmean(r.get("achieved_sparsity", 0) for r in runs),
                    "training_flops": _mean_of_present(runs, "training_flops"),
                }
        summary[setting] = rows
    return summary


def _mean_of_present(runs: list[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the runs that recorded it (older records may lack it); None if none did."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def markdown_tables(summary: dict[tuple[str, str], dict[str, Any]]) -> str:
    parts = []
    for (dataset, model), rows in summary.items():
        sparsities = sorted({s for by in rows.values() for s in by if s is not None})
        parts.append(f"## {model} on {dataset}\n")
        if DENSE in rows:
            d = rows[DENSE][None]
            m, s = d["accuracy"]
            parts.append(f"Dense reference: {m:.2f} ± {s:.2f}% ({d['seeds']} seed(s)), "
                         f"{d['nonzero_params']:,.0f} parameters, {d['effective_flops'] / 1e6:.2f} MFLOPs.\n")
        if sparsities:
            header = "| method | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |"
            parts += ["Test accuracy (%), mean ± std over seeds, by target sparsity:\n", header,
                      "|" + " --- |" * (len(sparsities) + 1)]
            for variant, by in rows.items():
                if all(s is None for s in by):
                    continue
                cells = [_accuracy_cell(by[s]) if s in by else "" for s in sparsities]
                parts.append(f"| {variant} | " + " | ".join(cells) + " |")
            parts.append("")
        for variant, by in rows.items():
            if variant != DENSE and None in by:  # e.g. activation density: the size is what it found
                cell = by[None]
                parts.append(f"{variant} (no target; it reached {100 * cell['achieved_sparsity']:.2f}% weight "
                             f"sparsity): accuracy (%) {_accuracy_cell(cell)}.\n")
        with_training_flops = any(c["training_flops"] for by in rows.values() for c in by.values())
        columns = ["method", "sparsity", "accuracy (%)", "non-zero params", "eff. MFLOPs"]
        columns += ["training PFLOPs"] if with_training_flops else []
        columns += ["time (s)"]
        parts += ["Size, cost and time (mean over seeds; sparsity is the achieved weight sparsity; training "
                  "FLOPs count forward + backward of every epoch at the model's size then; time is scoring + "
                  "training):\n",
                  "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for variant, by in rows.items():
            for s in _ordered(by):
                cell = by[s]
                values = [variant, f"{100 * cell['achieved_sparsity']:.4g}%", _accuracy_cell(cell),
                          f"{cell['nonzero_params']:,.0f}", f"{cell['effective_flops'] / 1e6:.3f}"]
                if with_training_flops:
                    flops = cell["training_flops"]
                    values.append("–" if flops is None else f"{flops / 1e15:.4f}")
                values += [f"{cell['seconds']:.1f}"]
                parts.append("| " + " | ".join(values) + " |")
        parts.append("")
    return "\n".join(parts)


def _accuracy_cell(cell: dict[str, Any]) -> str:
    m, sd = cell["accuracy"]
    return f"{m:.2f} ± {sd:.2f}" + (f" (n={cell['seeds']})" if cell["seeds"] == 1 else "")


def plot_accuracy_vs_remaining(summary, path: Path) -> None:
    """One panel per (dataset, model): accuracy against % of weights remaining, log x, error bars."""
    plt = _pyplot()
    settings = list(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        rows = summary[setting]
        ticks: set[float] = set()
        for variant, by in rows.items():
            if variant == DENSE:
                m, _ = by[None]["accuracy"]
                ax.axhline(m, color="black", linestyle="--", linewidth=1, label=f"dense ({m:.1f}%)")
                continue
            xs = [100 * (1 - by[s]["achieved_sparsity"]) for s in _ordered(by)]
            ticks.update(round(x, 3) for x in xs)
            ms = [by[s]["accuracy"][0] for s in _ordered(by)]
            sds = [by[s]["accuracy"][1] for s in _ordered(by)]
            ax.errorbar(xs, ms, yerr=sds, marker="o", markersize=4, capsize=3, label=variant)
        ax.set_xscale("log")
        if ticks:  # label the measured densities themselves: "10", "2", "1", "0.5" rather than powers of ten
            ax.set_xticks(sorted(ticks))
            ax.set_xticklabels([f"{t:g}" for t in sorted(ticks)])
            ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%, log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{setting[1]} on {setting[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    _save(fig, path)


_SCALE = {"effective_flops": 1e6, "training_flops": 1e15}


def plot_accuracy_vs(summary, key: str, label: str, path: Path, only_structured: bool = False) -> None:
    """Accuracy against ``key`` (``seconds`` or ``effective_flops``), one marker series per method."""
    plt = _pyplot()
    settings = list(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for variant, by in summary[setting].items():
            if only_structured and "structured" not in variant and variant not in _NO_TARGET:
                continue
            measured = [s for s in _ordered(by) if by[s][key] is not None]
            if not measured:
                continue
            xs = [by[s][key] / _SCALE.get(key, 1) for s in measured]
            ms = [by[s]["accuracy"][0] for s in measured]
            sds = [by[s]["accuracy"][1] for s in measured]
            ax.errorbar(xs, ms, yerr=sds, marker="s" if variant == DENSE else "o", linestyle="none", capsize=3,
                        label=variant)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{setting[1]} on {setting[0]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and the PNG plots for the store in ``results_dir``; print the tables."""
    results_dir = Path(results_dir)
    if not (results_dir / "results.sqlite").exists():
        raise FileNotFoundError(f"no results store in {results_dir} (expected {results_dir / 'results.sqlite'})")
    out = Path(out_dir) if out_dir else results_dir
    out.mkdir(parents=True, exist_ok=True)
    with ResultsStore(results_dir) as store:
        records = list(store.records())
        store.export_csv(out / "results.csv")
        store.export_jsonl(out / "results.jsonl")
    if not records:
        raise FileNotFoundError(f"the results store in {results_dir} holds no finished runs yet")
    summary = summarise(records)
    tables = markdown_tables(summary)
    plot_accuracy_vs_remaining(summary, out / "accuracy_vs_sparsity.png")
    plot_accuracy_vs(summary, "seconds", "total time: scoring + training (s)", out / "accuracy_vs_time.png")
    figures = ["accuracy_vs_sparsity.png", "accuracy_vs_time.png"]
    if any(r.get("structured") for r in records):
        plot_accuracy_vs(summary, "effective_flops", "FLOPs per example (M)", out / "accuracy_vs_flops.png", True)
        figures.append("accuracy_vs_flops.png")
    if any(r.get("when", "init") != "init" or r["method"] == "activation_density" for r in records):
        plot_accuracy_vs(summary, "training_flops", "training compute: forward + backward FLOPs (×10¹⁵)",
                         out / "accuracy_vs_training_flops.png")
        figures.append("accuracy_vs_training_flops.png")
    text = f"# Results: {results_dir}\n\n{len(records)} runs.\n\n{tables}\n" + "".join(
        f"![{f}]({f})\n\n" for f in figures
    )
    (out / "report.md").write_text(text)
    print(tables)
    print(f"report: {out / 'report.md'}")
    return out / "report.md"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
