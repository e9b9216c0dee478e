"""Report figures carry their recipe: the model with its width, the dataset with its training subset, the
epochs and the seeds in each panel's title and in report.md's caption; the dense line's spread over seeds
as a band; round log ticks (10, 5, 2, 1) on the weights-remaining axis, not the measured values."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from earlyprune.experiments import report  # noqa: E402


def _record(method, sparsity, seed, accuracy, achieved=None, width=0.5, subset=10_000, epochs=8):
    keep = 1 - (achieved if achieved is not None else sparsity)
    return {"key": f"{method}-{sparsity}-{seed}", "dataset": "cifar10", "model": "resnet20", "method": method,
            "sparsity": sparsity, "seed": seed, "when": "init", "structured": False, "final_accuracy": accuracy,
            "nonzero_params": 1000 * keep, "effective_flops": 2000 * keep, "train_seconds": 10.0,
            "scoring_seconds": 1.0, "achieved_sparsity": 1 - keep, "width": width, "train_subset": subset,
            "epochs": epochs}


def _records():
    out = [_record("dense", 0.0, s, a) for s, a in ((0, 0.55), (1, 0.52))]
    for sparsity, achieved in ((0.9, 0.8918), (0.97, 0.9687)):
        out += [_record("snip", sparsity, s, 0.45 + 0.01 * s, achieved) for s in (0, 1)]
    return out


def test_title_and_caption_carry_the_recipe():
    summary = report.summarise(_records())
    title = report.panel_title(("cifar10", "resnet20"), summary[("cifar10", "resnet20")])
    assert title == ("resnet20 ×0.5 on cifar10 (first 10,000 training examples), 8 epochs\n"
                     "2 seeds (0, 1): mean ± std over seeds")
    caption = report.figure_captions(summary)
    assert "resnet20 ×0.5 on cifar10 (first 10,000 training examples), 8 epochs; 2 seeds" in caption
    one = report.summarise([_record("dense", 0.0, 0, 0.9, width=1.0, subset=None, epochs=20)])
    assert report.panel_title(("cifar10", "resnet20"), one[("cifar10", "resnet20")]) == \
        "resnet20 on cifar10, 20 epochs\n1 seed (0): no spread to show"


def test_remaining_plot_has_round_ticks_a_dense_band_and_the_title(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    report.plot_accuracy_vs_remaining(report.summarise(_records()), tmp_path / "x.png")
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "10.8" not in labels and "3.13" not in labels  # the measured densities (10.82%, 3.13%)
    assert set(labels) & {"3", "5", "10"} and all(float(t) in (1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20) for t in labels)
    assert ax.get_title().startswith("resnet20 ×0.5 on cifar10")
    bands = [p for p in ax.patches if p.get_alpha() == 0.1]
    assert len(bands) == 1  # the dense line's ± std band: 53.5% ± 2.1
    y0, y1 = sorted(bands[0].get_path().get_extents(bands[0].get_transform() - ax.transData).intervaly)
    assert abs((y1 - y0) / 2 - 2.1213) < 1e-3
    assert any("dense (53.5% ± 2.1)" == t.get_text() for t in ax.get_legend().get_texts())
    plt.close("all")
