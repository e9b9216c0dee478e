"""earlyprune report: one look per method in every plot, cost units that keep tiny values readable, and
sparsity labels on the scatter plots that do not run into each other."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

import earlyprune as ep  # noqa: E402
from earlyprune.cli import main  # noqa: E402
from earlyprune.experiments import report  # noqa: E402
from earlyprune.experiments.store import ResultsStore  # noqa: E402

DENSE_PARAMS, DENSE_FLOPS, DENSE_TRAINING = 266_610, 532_400, 1.9e12  # LeNet-300 on MNIST: tiny next to a PFLOP


def record(method, sparsity, seed=0, when="init", structured=False, seconds=80.0, accuracy=0.95, achieved=None):
    keep = 1 - (achieved if achieved is not None else sparsity)
    return {"key": f"{method}-{sparsity}-{seed}-{when}-{structured}", "dataset": "mnist", "model": "lenet300",
            "method": method, "sparsity": sparsity, "seed": seed, "when": when, "structured": structured,
            "final_accuracy": accuracy, "nonzero_params": DENSE_PARAMS * keep, "effective_flops": DENSE_FLOPS * keep,
            "training_flops": DENSE_TRAINING * keep, "train_seconds": seconds, "scoring_seconds": 1.0,
            "achieved_sparsity": 1 - keep}


def mnist_like_records():
    """Dense first (it used to take the first colour of the cycle in one plot and not in the other), then
    methods whose points crowd into one corner of the accuracy-time plot."""
    records = [record("dense", 0.0, seed, seconds=126.0, accuracy=0.985) for seed in (0, 1)]
    for i, method in enumerate(["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"]):
        for j, sparsity in enumerate([0.9, 0.98, 0.99, 0.995]):
            for seed in (0, 1):
                records.append(record(method, sparsity, seed, seconds=80.0 + 2 * i + j + seed,
                                      accuracy=0.98 - 0.01 * j - 0.002 * i + 0.001 * seed))
    records.append(record("crop", 0.9, when="early", seconds=90.0, accuracy=0.97, achieved=0.8948))
    records.append(record("crop", 0.5, when="early", structured=True, seconds=60.0, accuracy=0.96, achieved=0.67))
    records.append(record("activation_density", 0.9, seconds=50.0, accuracy=0.9, achieved=0.9817))
    return records


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions make, kept open instead of written."""
    made = []
    monkeypatch.setattr(report, "_save", lambda fig, path: made.append(fig))
    yield made
    for fig in made:
        plt.close(fig)


def legend_colours(fig) -> dict[str, str]:
    colours = {}
    for ax in fig.axes:
        legend = ax.get_legend()
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            colour = handle.get_color() if hasattr(handle, "get_color") else handle.lines[0].get_color()
            colours[text.get_text()] = to_hex(colour)
    return colours


def test_every_method_has_one_colour_and_marker_in_every_plot(figures, tmp_path):
    summary = report.summarise(mnist_like_records())
    report.plot_accuracy_vs_remaining(summary, tmp_path / "a.png")
    report.plot_accuracy_vs(summary, "seconds", "time (s)", tmp_path / "b.png")
    report.plot_accuracy_vs(summary, "training_flops", "training ({unit})", tmp_path / "c.png")
    by_plot = [legend_colours(fig) for fig in figures]
    by_plot[0]["dense"] = by_plot[0].pop(next(label for label in by_plot[0] if label.startswith("dense (")))
    for variant in ["dense", "random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop", "crop @early",
                    "crop (structured) @early", "activation_density"]:
        colours = {plot[variant] for plot in by_plot}
        assert len(colours) == 1, (variant, colours)
    assert by_plot[0]["random"] == to_hex(report._METHOD_COLOURS["random"])
    methods = {label: colour for label, colour in by_plot[1].items() if not label.startswith("sparsity")
               and not label.endswith("%")}  # not the key to the marker sizes
    assert len(methods) == len(set(methods.values())) == 11  # eleven variants, eleven colours
    # the points themselves are drawn in their method's colour
    styles = report.method_styles(summary[("mnist", "lenet300")])
    allowed = {to_hex(style["color"]) for style in styles.values()}
    for fig in figures[1:]:
        drawn = {to_hex(c.lines[0].get_color()) for ax in fig.axes for c in ax.containers}
        assert drawn <= allowed


def test_method_styles_do_not_depend_on_which_methods_a_report_holds():
    alone = report.method_styles(["random"])
    after_dense = report.method_styles(["dense", "snip", "random"])
    assert alone["random"] == after_dense["random"]
    known = list(ep.methods()) + ["dense"]
    styles = report.method_styles(known)
    assert len({to_hex(style["color"]) for style in styles.values()}) == len(known)
    # a variant keeps its method's hue in a shade of its own, and its own marker
    variants = report.method_styles(["crop", "crop @early", "crop (structured) @early"])
    assert len({to_hex(s["color"]) for s in variants.values()}) == 3
    assert len({s["marker"] for s in variants.values()}) == 3
    # methods the report does not know: fixed by their sorted order, whatever else is in the report
    assert report.method_styles(["zeta", "alpha"]) == {
        k: v for k, v in report.method_styles(["alpha", "dense", "snip", "zeta"]).items() if k in ("alpha", "zeta")}
    unknown = report.method_styles(["zeta", "alpha", "snip"])
    assert unknown["alpha"]["color"] != unknown["zeta"]["color"]
    assert to_hex(unknown["alpha"]["color"]) not in {to_hex(c) for c in report._METHOD_COLOURS.values()}


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.split("Size, cost and time")[1].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    return rows[0], rows[2:]


def test_tiny_flops_keep_significant_digits_in_every_row():
    text = report.markdown_tables(report.summarise(mnist_like_records()))
    header, rows = table_rows(text)
    assert header[4:7] == ["eff. kFLOPs", "training GFLOPs", "time (s)"]
    for row in rows:
        for cell in row[4:7]:
            digits = re.sub(r"[^0-9]", "", cell).lstrip("0")
            assert len(digits) >= 2, (row, cell)  # never 0.0000: at least two significant digits shown
    dense = next(row for row in rows if row[0] == "dense")
    assert dense[4:6] == ["532.40", "1,900.00"]
    sparsest = next(row for row in rows if row[0] == "random" and row[1] == "99.5%")
    assert sparsest[4:6] == ["2.66", "9.50"]
    assert "Dense reference: 98.50 ± 0.00% (2 seed(s)), 266,610 parameters, 532 kFLOPs." in text


def test_units_keep_the_former_format_where_it_reads_well():
    unit = report._Unit.choose([3e15], "FLOPs", legacy=("P", 4))
    assert (unit.name, unit.format(3e15)) == ("PFLOPs", "3.0000")
    cifar = report._Unit.choose([5.04e13, 1.41e15], "FLOPs", legacy=("P", 4))
    assert (cifar.name, cifar.format(5.04e13)) == ("PFLOPs", "0.0504")
    early = report._Unit.choose([1.1e12, 4.95e12, None], "FLOPs", legacy=("P", 4))
    assert (early.name, early.format(1.1e12), early.format(4.95e12)) == ("TFLOPs", "1.10", "4.95")
    seconds = report._Unit.choose([0.004, 12.0], "s", legacy=("", 1), significant=2, prefixes=("",))
    assert (seconds.name, seconds.format(0.004)) == ("s", "0.0040")
    assert report._Unit.choose([0, None], "FLOPs", legacy=("M", 3)).format(0) == "0.000"


def test_scatter_points_are_labelled_by_sparsity_without_overlaps(figures, tmp_path):
    summary = report.summarise(mnist_like_records())
    report.plot_accuracy_vs(summary, "seconds", "total time (s)", tmp_path / "t.png")
    (fig,) = figures
    (ax,) = fig.axes
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().endswith("%")]
    assert {"90%", "99.5%", "98.2%"} <= {t.get_text() for t in labels}  # 98.2%: activation density reached it
    boxes = [t.get_window_extent(renderer) for t in labels]
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "sparsity (marker size):" in legend and "99.5%" in legend
    # sparser points are drawn larger, the same size for the same sparsity in every method
    sizes = {}
    for container in ax.containers:
        line = container.lines[0]
        sizes.setdefault(line.get_marker(), []).append(line.get_markersize())
    assert len(set(sizes["o"])) >= 4
    assert ax.get_xlabel() == "total time (s)"
    assert ax.get_ylabel() == "test accuracy (%)"


def test_measured_density_ticks_do_not_run_into_each_other(figures, tmp_path):
    records = [record("dense", 0.0), record("snip", 0.9, achieved=0.8948), record("crop", 0.9, achieved=0.8822),
               record("crop", 0.98, achieved=0.9743)]
    report.plot_accuracy_vs_remaining(report.summarise(records), tmp_path / "s.png")
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(boxes) >= 2
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)


def test_report_of_a_small_model_has_no_zero_columns(tmp_path):
    with ResultsStore(tmp_path) as store:
        for r in mnist_like_records():
            store.add(r)
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| 0.0000 |" not in text and "| 0.000 |" not in text
    for name in ("accuracy_vs_sparsity.png", "accuracy_vs_time.png", "accuracy_vs_training_flops.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_accuracy_vs_energy_is_drawn_only_when_runs_measured_energy(tmp_path, figures):
    """No energy counters (every run "not measured"): no energy plot. Counters read: the plot shows each
    method's mean energy over its seeds against its accuracy."""
    without, with_energy = tmp_path / "without", tmp_path / "with"
    records = [record("dense", 0.0, seed, accuracy=0.98) for seed in (0, 1)] + [record("snip", 0.9, 0, accuracy=0.9)]
    with ResultsStore(without) as store:
        for r in records:
            store.add({**r, "energy_joules": None, "energy_source": "not measured"})
    report.write_report(without)
    assert not (without / "accuracy_vs_energy.png").exists()
    assert "(accuracy_vs_energy.png)" not in (without / "report.md").read_text()
    joules = {("dense", 0): 100.0, ("dense", 1): 140.0, ("snip", 0): 30.0}
    with ResultsStore(with_energy) as store:
        for r in records:
            store.add({**r, "energy_joules": joules[r["method"], r["seed"]], "energy_source": "rapl"})
    before = len(figures)
    report.write_report(with_energy)
    assert "(accuracy_vs_energy.png)" in (with_energy / "report.md").read_text()
    energy_figure = next(fig for fig in figures[before:] if "energy" in fig.axes[0].get_xlabel())
    xs = sorted({float(x) for line in energy_figure.axes[0].lines for x in line.get_xdata()})
    assert xs == [30.0, 120.0]  # snip's one run; dense's mean over its two seeds


def test_runs_with_other_options_or_resize_periods_are_other_rows_not_more_seeds():
    """Three activation-density runs of one seed, compressed by different epochs, were merged into one row
    counted as '3 seeds'; each is its own row now, and the seeds of one setting still pool."""
    runs = [record("dense", 0.0, 0, accuracy=0.6)]
    for every, last in ((1, 2), (2, 4)):
        for seed in (0, 1):
            r = record("activation_density", 0.9, seed, accuracy=0.4 + 0.05 * every + 0.01 * seed)
            runs.append({**r, "key": f"ad-{every}-{seed}", "prune_every": every, "options": {"last_epoch": last}})
    summary = report.summarise(runs)
    (rows,) = summary.values()
    assert set(rows) == {"dense", "activation_density [last_epoch=2]", "activation_density every 2 [last_epoch=4]"}
    cell = rows["activation_density every 2 [last_epoch=4]"][None]
    assert cell["seeds"] == 2 and cell["accuracy"][0] == pytest.approx(100 * (0.5 + 0.005))
