"""Two parts of ``earlyprune report`` about what a pruning method decides:

* the sanity checks of Frankle et al. (ICLR 2021): the test metric of each method with no ablation and
  with each of shuffle / reinit / invert, side by side, with the change from no ablation
  (:func:`sanity_section`);
* the layer-wise picture: the density each method leaves in each prunable layer, drawn per (dataset,
  model) and target sparsity (:func:`plot_layer_density`). Frankle et al. argue the per-layer proportions
  are what carries the information; this is the figure researchers compare methods by.

Both read the records of a results store (``ablation``, ``preset`` and ``layer_density`` are recorded by
``earlyprune run``); records without them (older runs) count as no ablation, paper preset, no layers.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

ABLATION_COLUMNS = ("none", "shuffle", "reinit", "invert")


def _ablation(record: dict[str, Any]) -> str:
    return record.get("ablation") or "none"


def _label(record: dict[str, Any]) -> str:
    name = record["method"]
    return name + " [official]" if record.get("preset", "paper") == "official" else name


def _accuracy(record: dict[str, Any]) -> float | None:
    value = record.get("final_metric", record.get("final_accuracy"))
    if value is None:
        return None
    return 100.0 * value if record.get("metric_name", "accuracy") == "accuracy" else value


def sanity_section(records: Iterable[dict[str, Any]]) -> str:
    """Markdown: per (dataset, model), one row per method and target sparsity, one column per ablation
    (mean ± std over seeds, and the change from no ablation); '' when no record has an ablation."""
    records = [r for r in records if r["method"] != "dense" and not r.get("structured")
               and r.get("when", "init") == "init"]
    if not any(_ablation(r) != "none" for r in records):
        return ""
    cells: dict[tuple[str, str], dict[tuple[str, float], dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        value = _accuracy(r)
        if value is not None:
            cells[(r["dataset"], r["model"])][(_label(r), float(r["sparsity"]))][_ablation(r)].append(value)
    parts = ["## Sanity checks (Frankle et al., ICLR 2021)\n",
             "Test metric after pruning at initialisation and training, mean ± std over seeds; in brackets the "
             "change from the same method without ablation. shuffle: each layer's mask permuted at random "
             "(same per-layer density); reinit: kept weights re-drawn from the initialisation; invert: the "
             "least important weights kept. Frankle et al. find shuffle and reinit leave SNIP, GraSP and "
             "SynFlow nearly unchanged, and invert harms all but GraSP.\n"]
    for (dataset, model), rows in cells.items():
        parts += [f"### {model} on {dataset}\n", "| method | sparsity | " + " | ".join(ABLATION_COLUMNS) + " |",
                  "|" + " --- |" * (len(ABLATION_COLUMNS) + 2)]
        for (label, sparsity), by in sorted(rows.items(), key=lambda item: (item[0][0], item[0][1])):
            base = statistics.fmean(by["none"]) if by.get("none") else None
            values = []
            for ablation in ABLATION_COLUMNS:
                runs = by.get(ablation)
                if not runs:
                    values.append("")
                    continue
                mean = statistics.fmean(runs)
                sd = statistics.stdev(runs) if len(runs) > 1 else 0.0
                text = f"{mean:.2f} ± {sd:.2f}"
                if ablation != "none" and base is not None:
                    text += f" ({mean - base:+.2f})"
                values.append(text + (f" (n={len(runs)})" if len(runs) == 1 else ""))
            parts.append(f"| {label} | {100 * sparsity:g}% | " + " | ".join(values) + " |")
        parts.append("")
    return "\n".join(parts)


def layer_densities(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, float], dict[str, dict[str, float]]]:
    """``{(dataset, model, sparsity): {method label: {layer: mean density over seeds}}}`` of the runs
    without ablation that recorded their layers (shuffle keeps the same densities; reinit too)."""
    grouped: dict[tuple[str, str, float], dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("layer_density") and _ablation(r) == "none" and r["method"] != "dense":
            grouped[(r["dataset"], r["model"], float(r["sparsity"]))][_label(r)].append(r["layer_density"])
    result = {}
    for key, by_method in grouped.items():
        result[key] = {}
        for label, runs in by_method.items():
            layers = list(runs[0])
            result[key][label] = {layer: statistics.fmean(run.get(layer, 0.0) for run in runs) for layer in layers}
    return result


def plot_layer_density(records: Iterable[dict[str, Any]], path: Path) -> bool:
    """Draw each method's density per layer (one panel per dataset, model and target sparsity, layers in
    model order, log scale) to ``path``; False when no run recorded its layers."""
    data = layer_densities(records)
    if not data:
        return False
    from .report import _pyplot, _save, method_styles

    plt = _pyplot()
    keys = sorted(data)
    fig, axes = plt.subplots(len(keys), 1, figsize=(8.4, 3.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        by_method = data[key]
        styles = method_styles(label.replace(" [official]", " @official") for label in by_method)
        layers = list(next(iter(by_method.values())))
        for label, density in by_method.items():
            style = styles[label.replace(" [official]", " @official")]
            ax.plot(range(len(layers)), [max(density.get(layer, 0.0), 1e-4) for layer in layers], label=label,
                    color=style["color"], marker=style["marker"], linestyle=style["linestyle"])
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([layer.removesuffix(".weight") for layer in layers], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("density (kept fraction)")
        dataset, model, sparsity = key
        ax.set_title(f"{model} on {dataset}, target sparsity {100 * sparsity:g}%: density per layer")
        ax.axhline(1 - sparsity, color="grey", linewidth=0.8, linestyle=":")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    _save(fig, path)
    return True
