"""``earlyprune report RESULTS_DIR``: Markdown tables (also printed) and PNG plots of a results store.

Tables: the task's test metric (accuracy for classification, RMSE for regression, perplexity for language
modelling, mean episode return for reinforcement learning; which way is better is said) mean ± std over seeds for every method × sparsity (per dataset,
model and timing), with the dense reference; parameters, FLOPs and time. Plots: accuracy against the fraction of weights
remaining (log axis, one line per method, error bars over seeds), accuracy against total training time,
and, for structured runs, accuracy against FLOPs.

Every method has one look (colour, marker, line style) in all plots of all reports: fixed for the methods of
``earlyprune.methods()``, a shade of the method's colour for its structured and after-init variants. On the
scatter plots a point's marker size tells its sparsity (with a key in the legend) and, where there is room, a
small label beside it. Cost columns pick the unit (k/M/G/T/P) that shows every row with significant digits.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..atomic import atomic_write, atomic_write_text
from .config import DENSE, NO_TARGET_SPARSITY, target_sparsity
from .sanity_report import plot_layer_density, sanity_section
from .store import ResultsStore

#: How a task's main metric is shown: its label, the factor it is shown in, and whether higher is better.
#: A metric not listed is shown as it is, with the record's ``higher_is_better``.
_METRICS = {
    "accuracy": ("accuracy (%)", 100.0, True),
    "rmse": ("RMSE", 1.0, False),
    "perplexity": ("perplexity", 1.0, False),
    "return": ("mean return", 1.0, True),  # reinforcement learning: greedy episodes over fixed seeds
}


def _metric_name(record: dict[str, Any]) -> str:
    return record.get("metric_name") or "accuracy"


def _metric_value(record: dict[str, Any]) -> float | None:
    """The record's final test metric in the unit it is shown in (accuracy in %); records written before
    tasks existed hold only ``final_accuracy``."""
    value = record.get("final_metric")
    if value is None:
        value = record.get("final_accuracy")
    if value is None:
        return None
    return _METRICS.get(_metric_name(record), ("", 1.0, True))[1] * value


def metric_label(name: str, higher_is_better: bool | None = None) -> str:
    """``"accuracy (%)"``, ``"RMSE (lower is better)"``, ``"perplexity (lower is better)"``."""
    label, _, higher = _METRICS.get(name, (name, 1.0, True if higher_is_better is None else higher_is_better))
    return label if higher else f"{label} (lower is better)"


def _rows_metric(rows: dict[str, Any]) -> tuple[str, bool]:
    """The metric of a (dataset, model) table: name and whether higher is better."""
    for by in rows.values():
        for cell in by.values():
            return cell.get("metric_name", "accuracy"), cell.get("higher_is_better", True)
    return "accuracy", True


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _variant(record: dict[str, Any]) -> str:
    """The method as a line label: its name, and how/when it pruned when that is not 'at init'."""
    name = record["method"]
    if record.get("structured"):
        name += " (structured)"
    if record.get("when", "init") != "init" and record["method"] != DENSE:
        name += f" @{record['when']}"
    if record.get("preset", "paper") != "paper":
        name += f" [{record['preset']}]"
    if (record.get("ablation") or "none") != "none":
        name += f" [{record['ablation']}]"
    if record.get("budget"):
        name += f" [budget {record['budget']}]"
    if record["method"] == "activation_density" and (record.get("prune_every") or 1) != 1:
        name += f" every {record['prune_every']}"
    if record.get("options"):  # runs of one method with other options are other rows, not more seeds
        name += " [" + ", ".join(f"{k}={v}" for k, v in sorted(record["options"].items())) + "]"
    return name


def _ordered(by: dict[float | None, Any]) -> list[float | None]:
    return sorted(by, key=lambda s: -1.0 if s is None else s)


def summarise(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Group records by (dataset, model), then by variant and target sparsity (None for methods without
    one: dense, activation density), with mean and std over seeds."""
    grouped: dict[tuple[str, str], dict[str, dict[float, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in records:
        grouped[(r["dataset"], r["model"])][_variant(r)][target_sparsity(r)].append(r)
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for setting, variants in grouped.items():
        rows = {}
        for variant, by_sparsity in variants.items():
            rows[variant] = {}
            for sparsity in _ordered(by_sparsity):
                runs = by_sparsity[sparsity]
                acc = [v for v in map(_metric_value, runs) if v is not None]
                name = _metric_name(runs[0])
                rows[variant][sparsity] = {
                    # the task's main metric as shown (accuracy in %); the key keeps its first name
                    "accuracy": _mean_std(acc) if acc else (float("nan"), 0.0),
                    "metric_name": name,
                    "higher_is_better": (_METRICS[name][2] if name in _METRICS
                                         else runs[0].get("higher_is_better", True)),
                    "seeds": len(runs),
                    "nonzero_params": statistics.fmean(r["nonzero_params"] for r in runs),
                    "effective_flops": statistics.fmean((r.get("effective_flops") or 0) for r in runs),
                    "seconds": statistics.fmean(r.get("train_seconds", 0) + r.get("scoring_seconds", 0) for r in runs),
                    "achieved_sparsity": statistics.fmean(r.get("achieved_sparsity", 0) for r in runs),
                    "training_flops": _mean_of_present(runs, "training_flops"),
                    "energy_joules": _mean_of_present(runs, "energy_joules"),
                    # the recipe, for titles and captions: widths, training subsets, epochs, seeds
                    "widths": sorted({float(r.get("width") or 1.0) for r in runs}),
                    "subsets": sorted({int(r.get("train_subset") or 0) for r in runs}),
                    "epochs": sorted({int(r["epochs"]) for r in runs if r.get("epochs") is not None}),
                    "seed_values": sorted({r.get("seed", 0) for r in runs}),
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
        name, higher = _rows_metric(rows)
        label = metric_label(name, higher)
        if DENSE in rows:
            d = rows[DENSE][None]
            m, s = d["accuracy"]
            flops = _Unit.choose([d["effective_flops"]], "FLOPs", legacy=("M", 2))
            value = f"{m:.2f} ± {s:.2f}%" if name == "accuracy" else f"{label} {_format_metric(m, s)}"
            parts.append(f"Dense reference: {value} ({d['seeds']} seed(s)), "
                         f"{d['nonzero_params']:,.0f} parameters, {flops.format(d['effective_flops'])} "
                         f"{flops.name}.\n")
        if sparsities:
            header = "| method | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |"
            parts += [f"Test {label}, mean ± std over seeds, by target sparsity:\n", header,
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
                             f"sparsity): {label} {_accuracy_cell(cell)}.\n")
        cells = [c for by in rows.values() for c in by.values()]
        with_training_flops = any(c["training_flops"] for c in cells)
        # Each cost column gets the unit (and decimals) that shows every row with significant digits: an
        # MNIST run's training compute is a few GFLOPs, a CIFAR run's a fraction of a PFLOP.
        eff = _Unit.choose([c["effective_flops"] for c in cells], "FLOPs", legacy=("M", 3))
        train = _Unit.choose([c["training_flops"] for c in cells], "FLOPs", legacy=("P", 4))
        secs = _Unit.choose([c["seconds"] for c in cells], "s", legacy=("", 1), significant=2, prefixes=("",))
        columns = ["method", "sparsity", label, "non-zero params", f"eff. {eff.name}"]
        columns += [f"training {train.name}"] if with_training_flops else []
        columns += ["time (s)"]
        parts += ["Size, cost and time (mean over seeds; sparsity is the achieved weight sparsity; training "
                  "FLOPs count forward + backward of every epoch at the model's size then; time is scoring + "
                  "training):\n",
                  "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for variant, by in rows.items():
            for s in _ordered(by):
                cell = by[s]
                values = [variant, f"{100 * cell['achieved_sparsity']:.4g}%", _accuracy_cell(cell),
                          f"{cell['nonzero_params']:,.0f}", eff.format(cell["effective_flops"])]
                if with_training_flops:
                    flops = cell["training_flops"]
                    values.append("–" if flops is None else train.format(flops))
                values += [secs.format(cell["seconds"])]
                parts.append("| " + " | ".join(values) + " |")
        parts.append("")
    return "\n".join(parts)


def _accuracy_cell(cell: dict[str, Any]) -> str:
    m, sd = cell["accuracy"]
    text = f"{m:.2f} ± {sd:.2f}" if cell.get("metric_name", "accuracy") == "accuracy" else _format_metric(m, sd)
    return text + (f" (n={cell['seeds']})" if cell["seeds"] == 1 else "")


def _format_metric(mean: float, sd: float) -> str:
    """A metric other than accuracy (RMSE, perplexity): four significant digits."""
    return f"{mean:.4g} ± {sd:.2g}"


# ---------------------------------------------------------------------------------------------------------
# Units for the cost columns and axes.

_PREFIXES = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def _shown_digits(value: float, decimals: int) -> int:
    """How many significant digits ``value`` (> 0) keeps when printed with ``decimals`` decimals."""
    return math.floor(math.log10(value)) + 1 + decimals


@dataclass(frozen=True)
class _Unit:
    """A unit for one table column (or axis): an SI prefix and a number of decimals shared by its rows."""

    prefix: str
    unit: str
    decimals: int

    @property
    def scale(self) -> float:
        return _PREFIXES[self.prefix]

    @property
    def name(self) -> str:
        return self.prefix + self.unit

    def format(self, value: float) -> str:
        return f"{value / self.scale:,.{self.decimals}f}"

    @classmethod
    def choose(cls, values: Iterable[float | None], unit: str, legacy: tuple[str, int], significant: int = 3,
               prefixes: Iterable[str] = tuple(_PREFIXES)) -> "_Unit":
        """The column's former format ``legacy`` (prefix, decimals) while it shows every non-zero value with
        at least ``significant`` digits (so reports that read well do not change); otherwise the largest
        prefix in which the smallest value is at least 1, with enough decimals for ``significant`` digits."""
        nonzero = [abs(v) for v in values if v]
        prefix, decimals = legacy
        if not nonzero or _shown_digits(min(nonzero) / _PREFIXES[prefix], decimals) >= significant:
            return cls(prefix, unit, decimals)
        smallest = min(nonzero)
        prefixes = sorted(prefixes, key=_PREFIXES.__getitem__)
        prefix = ([p for p in prefixes if smallest >= _PREFIXES[p]] or prefixes[:1])[-1]
        decimals = max(0, significant - _shown_digits(smallest / _PREFIXES[prefix], 0))
        return cls(prefix, unit, decimals)


def _axis_unit(values: Iterable[float], unit: str) -> _Unit:
    """The prefix that puts the largest value between 1 and 1000 (an axis needs no fixed decimals)."""
    largest = max((abs(v) for v in values if v), default=0.0)
    prefix = max((p for p in _PREFIXES if largest >= _PREFIXES[p]), key=_PREFIXES.__getitem__, default="")
    return _Unit(prefix, unit, 0)


# ---------------------------------------------------------------------------------------------------------
# One look per method, the same in every plot of every report.

_DENSE_LOOK = {"color": "black", "marker": "s", "linestyle": "--", "markerscale": 0.9}
_MARKER_SCALE = {"^": 1.3, "v": 1.3, "D": 0.85, "s": 0.9}  # so that every marker looks about as large
# The methods of ``earlyprune.methods()``; a method not listed gets a colour of _FALLBACK_COLOURS, in the
# sorted order of such methods in the report.
_METHOD_COLOURS = {
    "random": "#7f7f7f",  # grey
    "magnitude": "#8c564b",  # brown
    "snip": "#1f77b4",  # blue
    "grasp": "#ff7f0e",  # orange
    "synflow": "#9467bd",  # purple
    "prospr": "#bcbd22",  # olive
    "crop": "#d62728",  # red
    "snip-it": "#17becf",  # cyan
    "crop-it": "#e377c2",  # pink
    "activation_density": "#2ca02c",  # green
}
_FALLBACK_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
_FALLBACK_MARKERS = ("o", "P", "X", "p", "h", "*")
# How and when a method pruned, (structured, after init): a shade of its colour (negative: darker), a marker
# and a line style. "crop", "crop @early" and "crop (structured) @early" are three reds, told apart.
_VARIANT_LOOK = {
    (False, False): (0.0, "o", "-"),
    (False, True): (-0.45, "^", "--"),
    (True, False): (0.35, "D", ":"),
    (True, True): (0.35, "v", "-."),
}


def _parse_variant(variant: str) -> tuple[str, bool, bool]:
    """``_variant``'s label back to (method, structured, pruned after init)."""
    method = variant.split(" [")[0].split(" (structured)")[0].split(" @")[0]
    return method, " (structured)" in variant, " @" in variant


def _shade(colour: str, amount: float) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    target = 1.0 if amount > 0 else 0.0
    return tuple(c + abs(amount) * (target - c) for c in to_rgb(colour))


def method_styles(variants: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Colour, marker and line style of every variant (line label) in ``variants``: fixed for the known
    methods, so a method looks the same in every plot; other methods by their sorted order."""
    variants = list(dict.fromkeys(variants))
    unknown = sorted({_parse_variant(v)[0] for v in variants if v != DENSE} - set(_METHOD_COLOURS))
    styles = {}
    for variant in variants:
        if variant == DENSE:
            styles[variant] = dict(_DENSE_LOOK)
            continue
        method, structured, timed = _parse_variant(variant)
        shade, marker, linestyle = _VARIANT_LOOK[(structured, timed)]
        if method in _METHOD_COLOURS:
            colour = _METHOD_COLOURS[method]
        else:
            i = unknown.index(method)
            colour = _FALLBACK_COLOURS[i % len(_FALLBACK_COLOURS)]
            if i >= len(_FALLBACK_COLOURS) and not (structured or timed):  # colours repeat: vary the marker
                marker = _FALLBACK_MARKERS[(i // len(_FALLBACK_COLOURS)) % len(_FALLBACK_MARKERS)]
        tag = variant.split(" [", 1)[1] if " [" in variant else ""
        if tag:  # a preset or an ablation: the method's colour, shaded, with its own marker and dashes
            shade, marker, linestyle = _TAG_LOOK.get(tag.split("]")[0], (0.3, "P", (0, (1, 1))))
        styles[variant] = {"color": _shade(colour, shade), "marker": marker, "linestyle": linestyle,
                           "markerscale": _MARKER_SCALE.get(marker, 1.0)}
    return styles


#: Look of a variant run with a preset or an ablation (``_variant``'s ``[tag]``): shade, marker, dashes.
_TAG_LOOK = {"official": (-0.35, "*", "--"), "shuffle": (0.3, "s", ":"), "reinit": (0.5, "X", "-."),
             "invert": (-0.5, "v", (0, (5, 2, 1, 2)))}


def _report_styles(summary) -> dict[str, dict[str, Any]]:
    return method_styles(v for rows in summary.values() for v in rows)


# ---------------------------------------------------------------------------------------------------------
# Plots.

def _recipe(rows: dict[str, Any], key: str) -> list[Any]:
    return sorted({v for by in rows.values() for cell in by.values() for v in cell.get(key, [])})


def _span(values: list[Any], fmt=str) -> str:
    return fmt(values[0]) if len(values) == 1 else f"{fmt(values[0])}–{fmt(values[-1])}"


def panel_title(setting: tuple[str, str], rows: dict[str, Any]) -> str:
    """A panel's title: the model with its width, the dataset with its training subset, the epochs and the
    seeds, e.g. ``resnet20 ×0.5 on cifar10 (first 10,000 training examples), 8 epochs`` over
    ``2 seeds (0, 1): mean ± std``."""
    dataset, model = setting
    widths, subsets, epochs, seeds = (_recipe(rows, k) for k in ("widths", "subsets", "epochs", "seed_values"))
    model_text = model + ("" if widths in ([], [1.0]) else " ×" + _span(widths, lambda w: f"{w:g}"))
    if subsets and subsets != [0]:
        shown = [n for n in subsets if n] or subsets
        data_text = f"{dataset} (first {_span(shown, lambda n: f'{n:,}')} training examples" + \
            (", some runs all" if 0 in subsets else "") + ")"
    else:
        data_text = dataset
    first = f"{model_text} on {data_text}" + (f", {_span(epochs)} epochs" if epochs else "")
    most = max((cell.get("seeds", 1) for by in rows.values() for cell in by.values()), default=1)
    listed = ", ".join(map(str, seeds[:6])) + (" ..." if len(seeds) > 6 else "")
    second = (f"{most} seeds ({listed}): mean ± std over seeds" if most > 1 else
              f"1 seed ({listed}): no spread to show")
    return f"{first}\n{second}"


def figure_captions(summary) -> str:
    """One caption line per (dataset, model) for report.md: its recipe and what the points and bars are."""
    lines = []
    for setting, rows in summary.items():
        title = panel_title(setting, rows).replace("\n", "; ")
        lines.append(f"*{title}. Points: the mean over seeds; bars (and the band around the dense line): ± one "
                     "sample standard deviation over seeds.*")
    return "\n\n".join(lines) + "\n\n"


_LEGEND = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}
_PANEL_SIZE = (8.4, 4.8)  # inches per (dataset, model) panel, the legend beside it included


def plot_accuracy_vs_remaining(summary, path: Path) -> None:
    """One panel per (dataset, model): accuracy against % of weights remaining, log x, error bars."""
    plt = _pyplot()
    styles = _report_styles(summary)
    settings = list(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(_PANEL_SIZE[0] * len(settings), _PANEL_SIZE[1]),
                             squeeze=False)
    tick_axes = []
    for ax, setting in zip(axes[0], settings):
        rows = summary[setting]
        ticks: set[float] = set()
        for variant, by in rows.items():
            style = styles[variant]
            if variant == DENSE:
                m, sd = by[None]["accuracy"]
                shown = f"{m:.1f}%" if _rows_metric(rows)[0] == "accuracy" else f"{m:.4g}"
                if sd > 0:  # its spread over seeds as a band
                    shown += f" ± {sd:.1f}" if _rows_metric(rows)[0] == "accuracy" else f" ± {sd:.2g}"
                    ax.axhspan(m - sd, m + sd, color=style["color"], alpha=0.1, linewidth=0)
                ax.axhline(m, color=style["color"], linestyle=style["linestyle"], linewidth=1,
                           label=f"dense ({shown})")
                continue
            xs = [100 * (1 - by[s]["achieved_sparsity"]) for s in _ordered(by)]
            ticks.update(float(f"{x:.3g}") for x in xs)
            ms = [by[s]["accuracy"][0] for s in _ordered(by)]
            sds = [by[s]["accuracy"][1] for s in _ordered(by)]
            ax.errorbar(xs, ms, yerr=sds, color=style["color"], marker=style["marker"],
                        markersize=5 * style["markerscale"],
                        linestyle=style["linestyle"], capsize=3, label=variant)
        if ticks:  # round ticks read as plain numbers (1, 2, 5, 10, 20), not the measured values (8.18, 28.1)
            ax.margins(x=0.06)
            _plain_log_xaxis(ax)
            if len(ax.get_xticks()) < 2:  # a narrow range: the measured values after all
                ax.set_xticks(sorted(ticks))
                ax.set_xticklabels([f"{t:g}" for t in sorted(ticks)])
            tick_axes.append(ax)
        else:
            ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%, log scale)")
        ax.set_ylabel(f"test {metric_label(*_rows_metric(rows))}")
        ax.set_title(panel_title(setting, rows), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()  # dense (the reference line) first
        order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith(f"{DENSE} ("))
        ax.legend([handles[i] for i in order], [labels[i] for i in order], **_LEGEND)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax in tick_axes:
        _thin_xticks(ax, renderer)
    _save(fig, path)


def plot_accuracy_vs(summary, key: str, label: str, path: Path, only_structured: bool = False) -> None:
    """Accuracy against ``key`` (``seconds``, ``effective_flops`` or ``training_flops``), one marker series
    per method. A point's sparsity is its marker's size (explained in the legend) and, where there is room
    for it, a small label beside it. For FLOPs, ``{unit}`` in ``label`` becomes the unit that fits."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    styles = _report_styles(summary)
    settings = list(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(_PANEL_SIZE[0] * len(settings), _PANEL_SIZE[1]),
                             squeeze=False)
    # one size per sparsity across the panels (those of the points this plot shows)
    sizes = _marker_sizes(_sparsity_value(v, s, by[s]) for rows in summary.values() for v, by in rows.items()
                          for s in by if by[s][key] is not None
                          and not (only_structured and "structured" not in v and v not in NO_TARGET_SPARSITY))
    labelled = []
    for ax, setting in zip(axes[0], settings):
        series = []
        for variant, by in summary[setting].items():
            if only_structured and "structured" not in variant and variant not in NO_TARGET_SPARSITY:
                continue
            measured = [s for s in _ordered(by) if by[s][key] is not None]
            if measured:
                series.append((variant, by, measured))
        unit = _axis_unit((by[s][key] for _, by, measured in series for s in measured), "FLOPs")
        scale = unit.scale if key.endswith("flops") else 1.0
        points, handles = [], []
        series.sort(key=lambda item: item[0] != DENSE)  # dense first, in the legend too
        for variant, by, measured in series:
            style = styles[variant]
            for s in measured:
                cell = by[s]
                x, (m, sd) = cell[key] / scale, cell["accuracy"]
                value = _sparsity_value(variant, s, cell)
                size = (_DENSE_SIZE if value is None else sizes[value]) * style["markerscale"]
                ax.errorbar([x], [m], yerr=[sd], color=style["color"], marker=style["marker"], markersize=size,
                            markeredgecolor="white", markeredgewidth=0.5, linestyle="none", capsize=3,
                            elinewidth=1, zorder=3)
                points.append((x, m, sd, None if value is None else f"{value:g}%", style["color"], size))
            handles.append(Line2D([], [], color=style["color"], marker=style["marker"], linestyle="none",
                                  markersize=6 * style["markerscale"], label=variant))
        shown = sorted({p[3] for p in points if p[3] is not None}, key=lambda t: float(t[:-1]))
        if shown:  # the key to the marker sizes of this panel, after the methods
            handles.append(Line2D([], [], linestyle="none", label="sparsity (marker size):"))
            handles += [Line2D([], [], color="0.45", marker="o", linestyle="none",
                               markersize=sizes[float(text[:-1])], label=text) for text in shown]
        ax.margins(x=0.08, y=0.08)  # room for the labels of the outermost points
        xlabel = label.format(unit=unit.name) if key.endswith("flops") else label
        xs = [p[0] for p in points if p[0] > 0]
        if xs and max(xs) >= _LOG_SPAN * min(xs):  # a slow outlier would squeeze all the others together
            _plain_log_xaxis(ax)
            xlabel = xlabel[:-1] + ", log scale)" if xlabel.endswith(")") else xlabel + " (log scale)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric_label(*_rows_metric(summary[setting]))}")
        ax.set_title(panel_title(setting, summary[setting]), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(handles=handles, **_LEGEND)
        labelled.append((ax, points))
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax, points in labelled:
        _thin_xticks(ax, renderer)
        _label_points(ax, points, renderer)
    _save(fig, path)


_LOG_SPAN = 4.0  # a panel whose x values span this factor or more gets a log x axis


def _plain_log_xaxis(ax) -> None:
    """A log x axis whose ticks read as plain numbers (50, 100, 200, 300), not powers of ten."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log")
    low, high = sorted(ax.get_xlim())
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for mantissas in ((1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8), (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0**e for e in decades for m in mantissas if low <= m * 10.0**e <= high]
        if len(ticks) >= 4:
            break
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


_DENSE_SIZE = 6.5
_SIZE_RANGE = (5.0, 10.0)  # marker sizes (points) of the least and the most sparse point of a panel


def _sparsity_value(variant: str, target: float | None, cell: dict[str, Any]) -> float | None:
    """A point's sparsity (%) as the plots show it: its target; for a method without one (activation
    density), the sparsity it reached; None for dense."""
    if variant == DENSE:
        return None
    return float(f"{100 * (cell['achieved_sparsity'] if target is None else target):.3g}")


def _marker_sizes(values: Iterable[float | None]) -> dict[float, float]:
    """Marker size of each sparsity in a panel, by rank: sparser points are larger."""
    ranked = sorted({v for v in values if v is not None})
    low, high = _SIZE_RANGE
    if len(ranked) == 1:
        return {ranked[0]: (low + high) / 2}
    return {v: low + (high - low) * i / (len(ranked) - 1) for i, v in enumerate(ranked)}


# Where a point's label may go, nearest first: offset (points, beyond the marker's edge) from the point,
# and the text's alignment. The further ones get a thin leader line.
_LABEL_OFFSETS = [
    (dx * r, dy * r, ha, va)
    for r in (1.0, 4.5)
    for dx, dy, ha, va in [(1, 0, "left", "center"), (-1, 0, "right", "center"), (0.75, 0.75, "left", "bottom"),
                           (-0.75, 0.75, "right", "bottom"), (0.75, -0.75, "left", "top"),
                           (-0.75, -0.75, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top")]
]


def _label_points(ax, points, renderer) -> None:
    """Write each point's sparsity label (small, in a darker shade of its colour) at the nearest offset where it covers
    no other label, marker or error bar and stays inside the axes; a label set further out gets a thin
    leader line. A point with no such place stays unlabelled: its marker's size still tells its sparsity."""
    from matplotlib.transforms import Bbox

    to_pixels = ax.transData.transform
    pixels_per_point = ax.figure.dpi / 72
    obstacles = []  # (bbox, index of the point it belongs to)
    for i, (x, y, sd, _, _, size) in enumerate(points):
        px, py = to_pixels((x, y))
        r = (size / 2 + 1) * pixels_per_point
        obstacles.append((Bbox.from_extents(px - r, py - r, px + r, py + r), i))
        if sd:
            (_, low), (_, high) = to_pixels((x, y - sd)), to_pixels((x, y + sd))
            w = 3 * pixels_per_point  # the caps
            obstacles.append((Bbox.from_extents(px - w, low - 1, px + w, high + 1), i))
    frame = ax.get_window_extent(renderer)
    placed: list = []
    for i, (x, y, _, text, colour, size) in enumerate(points):
        if text is None:
            continue
        for n, (dx, dy, ha, va) in enumerate(_LABEL_OFFSETS):
            far = n >= 8
            gap = size / 2 + 2  # points from the centre to just beyond the marker
            note = ax.annotate(text, (x, y), xytext=(dx * gap, dy * gap), textcoords="offset points", ha=ha,
                               va=va, fontsize=6.5, color=_shade(colour, -0.25), annotation_clip=False, zorder=4,
                               arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.5,
                                           "shrinkA": 0, "shrinkB": size / 2} if far else None)
            box = note.get_window_extent(renderer).expanded(1.06, 1.1)
            free = (_overlap(box, frame) >= box.width * box.height - 1e-6
                    and not any(_overlap(box, other) for other in placed)
                    and not any(_overlap(box, other) for other, owner in obstacles if owner != i or far))
            if free:
                placed.append(box)
                break
            note.remove()


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _thin_xticks(ax, renderer) -> None:
    """Drop the measured-density ticks whose labels would run into their neighbour's (10.5 next to 11.8)."""
    ticks = list(ax.get_xticks())
    labels = ax.get_xticklabels()
    boxes = [label.get_window_extent(renderer) for label in labels]
    kept, last = [], None
    for tick, label, box in sorted(zip(ticks, labels, boxes), key=lambda t: t[2].x0):
        if last is None or box.x0 > last.x1 + 8:
            kept.append((tick, label.get_text()))
            last = box
    ax.set_xticks([t for t, _ in kept])
    ax.set_xticklabels([text for _, text in kept])
    ax.minorticks_off()



def write_report(results_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and the PNG plots for the store in ``results_dir``; print the tables.

    ``results_dir`` may also be a folder of stores (the ``shard-K-of-N`` folders of a sharded sweep) or a
    list of stores (then ``out_dir`` is needed): their runs are merged by run key (:mod:`.merge`).

    Every file is written atomically. ``results.jsonl`` is merged, never overwritten: the records it
    already holds (from ``earlyprune run --out``, another store) stay, one per run key, and the store's
    runs are added or replace theirs; ``results.csv`` is written from the merged records. Runs that
    measured nothing (``epochs = 0``) are exported but left out of the tables and plots."""
    from .records import merge_records
    from .store import write_csv

    from .merge import read_stores

    # several stores, or a folder of them (the shards of a job array): their runs merged by run key
    several = not isinstance(results_dir, (str, Path))
    if several and not out_dir:
        raise ValueError("several results stores given: say where the merged report goes with --out DIR")
    read = read_stores(results_dir)
    results_dir = ", ".join(map(str, results_dir)) if several else Path(results_dir)
    out = Path(out_dir) if out_dir else results_dir
    records = read.records
    if not records:
        raise FileNotFoundError(f"the results store in {results_dir} holds no finished runs yet")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: give the folder for report.md and the plots")
    out.mkdir(parents=True, exist_ok=True)
    merged, elsewhere, unreadable = merge_records(out / "results.jsonl", records)
    write_csv(out / "results.csv", merged)
    if unreadable:
        print(f"report: {unreadable} unreadable line(s) of {out / 'results.jsonl'} moved to "
              f"{out / 'results.jsonl.unreadable'}", file=sys.stderr)
    unmeasured = [r for r in records if _metric_value(r) is None]
    records = [r for r in records if _metric_value(r) is not None]
    if not records:
        raise ValueError(f"the results store in {results_dir} holds only runs that measured nothing (epochs = 0, "
                         f"{len(unmeasured)} run(s)): no table or plot to make; run with --epochs 1 or more")
    summary = summarise(records)
    tables = markdown_tables(summary)
    plot_accuracy_vs_remaining(summary, out / "accuracy_vs_sparsity.png")
    plot_accuracy_vs(summary, "seconds", "total time: scoring + training (s)", out / "accuracy_vs_time.png")
    figures = ["accuracy_vs_sparsity.png", "accuracy_vs_time.png"]
    if any(r.get("structured") for r in records):
        plot_accuracy_vs(summary, "effective_flops", "effective FLOPs per example ({unit})",
                         out / "accuracy_vs_flops.png", True)
        figures.append("accuracy_vs_flops.png")
    if any(r.get("when", "init") != "init" or r["method"] == "activation_density" for r in records):
        plot_accuracy_vs(summary, "training_flops", "training compute: forward + backward ({unit})",
                         out / "accuracy_vs_training_flops.png")
        figures.append("accuracy_vs_training_flops.png")
    if any(r.get("energy_joules") is not None for r in records):  # only where the hardware reported it
        plot_accuracy_vs(summary, "energy_joules", "energy used in training (J)", out / "accuracy_vs_energy.png")
        figures.append("accuracy_vs_energy.png")
    notes = ""
    if len(read.stores) > 1:
        notes += (f"Merged from {len(read.stores)} stores ({read.duplicates} duplicate run(s) counted once"
                  + (f", {len(read.conflicts)} with conflicting results: the first finished kept" if read.conflicts
                     else "") + ").\n\n")
    if unmeasured:
        notes += f"{len(unmeasured)} run(s) with epochs = 0 (nothing measured) are left out.\n\n"
    if elsewhere:
        notes += f"results.jsonl also holds {elsewhere} record(s) that are not in this store (kept from the file).\n\n"
    if plot_layer_density(records, out / "layer_density.png"):
        figures.append("layer_density.png")
    tables += sanity_section(records)
    text = f"# Results: {results_dir}\n\n{len(records)} runs.\n\n{notes}{tables}\n" + figure_captions(summary) + "".join(
        f"![{f}]({f})\n\n" for f in figures
    )
    atomic_write_text(out / "report.md", text)
    print(tables)
    print(f"report: {out / 'report.md'}")
    return out / "report.md"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Save ``fig`` as a PNG at ``path``, atomically."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    import matplotlib.pyplot as plt

    plt.close(fig)
