"""Progress off a terminal: plain lines with an ETA at least every 10% of a run, each epoch's metrics as it
ends, pruning rounds (SynFlow's) reported once slow, nothing when disabled, and no warning from the
progress bar's loss (``Converting a tensor with requires_grad=True to a scalar``)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings

import pytest
import torch

import earlyprune as ep
from earlyprune import models, progress
from earlyprune.progress import LineProgress, duration
from earlyprune.train import TrainConfig, train

_LINE = re.compile(r"(\d+)% \((\d+)/(\d+)\).*elapsed \S+, ETA (\S+)")


def _percentages(text: str) -> list[int]:
    return [int(m.group(1)) for m in _LINE.finditer(text)]


def _largest_gap(text: str) -> float:
    """The largest share of the run between two progress lines (from the start to the first one too)."""
    done = [(int(m.group(2)), int(m.group(3))) for m in _LINE.finditer(text)]
    assert done, text
    steps = [0] + [d for d, _ in done]
    return max(b - a for a, b in zip(steps, steps[1:])) / done[0][1]


def _data(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, n, 8)]


def test_lines_every_ten_percent_with_eta():
    stream = io.StringIO()
    now = [0.0]
    reporter = LineProgress(37, "run", stream=stream, clock=lambda: now[0])
    for _ in range(37):
        now[0] += 1.0  # one second a step
        reporter.update(1)
    text = stream.getvalue()
    assert _percentages(text)[-1] == 100 and len(_percentages(text)) == 10
    # a line as soon as each tenth of the run is done: 10% of 37 steps is 3.7, so at most 4 steps apart
    assert _largest_gap(text) <= 4 / 37
    assert "ETA 0.0s" in text.splitlines()[-1] and "ETA 33s" in text.splitlines()[0]  # 4 steps in 4 s, 33 left


def test_training_off_a_terminal_prints_progress_and_each_epoch(capsys):
    torch.manual_seed(0)
    model = models.create("lenet300")
    data = _data()
    result = train(model, data, data[:2], TrainConfig(epochs=3, lr=0.01), description="lenet300")
    err = capsys.readouterr().err
    assert _percentages(err)[-1] == 100
    assert _largest_gap(err) <= 0.1 + 1 / 36  # 36 steps: a line within a step of each tenth
    epochs = re.findall(r"lenet300: epoch (\d)/3: train loss ([\d.]+), accuracy [\d.]+; test loss", err)
    assert [int(e) for e, _ in epochs] == [1, 2, 3]
    assert float(epochs[-1][1]) == pytest.approx(result.history[-1].train_loss, rel=1e-3)


def test_disabled_prints_nothing(capsys):
    model = models.create("lenet300")
    train(model, _data(16), None, TrainConfig(epochs=1, lr=0.01, progress=False))
    with progress.default(False):
        train(model, _data(16), None, TrainConfig(epochs=1, lr=0.01))
    assert capsys.readouterr().err == ""


def test_the_bar_gives_no_requires_grad_warning(capsys):
    model = models.create("lenet300")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loss shown on the bar was float(loss) of a tensor needing grad
        train(model, _data(16), None, TrainConfig(epochs=1, lr=0.01, progress=True))


def _mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    model.input_shape = (16,)  # SynFlow's all-ones input
    return model


def test_synflow_rounds_report_progress_once_slow(capsys, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep.prune(_mlp(), "synflow", 0.9, iterations=10)
    assert capsys.readouterr().err == ""  # quick: silent
    monkeypatch.setattr(progress, "ROUNDS_QUIET_SECONDS", 0.0)  # as if each round were slow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep.prune(_mlp(), "synflow", 0.9, iterations=10)
        ep.prune_channels(_mlp(), "crop-it", 0.6, data=(torch.randn(8, 16), torch.arange(8) % 4))
    err = capsys.readouterr().err
    assert "synflow rounds: 100% (10/10)" in err and len(re.findall("synflow rounds", err)) == 10
    assert "crop-it structured rounds: 100%" in err  # EarlyCroP's iterative schedule


def test_earlyprune_run_off_a_terminal(tmp_path):
    command = [sys.executable, "-m", "earlyprune", "run", "--dataset", "mnist-sample", "--model", "lenet300",
               "--method", "snip", "--sparsity", "0.9", "--epochs", "2", "--train-subset", "1000",
               "--device", "cpu", "--out", str(tmp_path / "runs.jsonl")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert _percentages(done.stderr)[-1] == 100
    assert _largest_gap(done.stderr) <= 0.1 + 1 / 20  # 2 epochs of 10 steps
    assert "epoch 2/2" in done.stderr
    assert "Warning" not in done.stderr, done.stderr


def test_duration():
    assert duration(4.24) == "4.2s" and duration(75.2) == "1m15s" and duration(3725) == "1h02m"


def test_run_experiment_progress_false_silences_the_rounds_too(capsys, monkeypatch):
    from earlyprune.experiments.config import RunConfig
    from earlyprune.experiments.run import run_experiment

    monkeypatch.setattr(progress, "ROUNDS_QUIET_SECONDS", 0.0)  # as if each round were slow
    config = RunConfig.from_dict({"dataset": "mnist-sample", "model": "lenet300", "method": "synflow",
                                  "sparsity": 0.9, "iterations": 3, "epochs": 0, "train_subset": 200})
    run_experiment(config, progress=False, device="cpu")  # as sweeps and the demo run
    assert "synflow rounds" not in capsys.readouterr().err
    run_experiment(config, device="cpu")  # earlyprune run: progress by terminal
    assert "synflow rounds: 100% (3/3)" in capsys.readouterr().err


def test_a_run_names_itself_by_method_and_target_dense_without_one():
    from earlyprune.experiments.config import RunConfig
    from earlyprune.experiments.run import run_description

    assert run_description(RunConfig(method="dense").pruning) == "dense"  # was "dense 0.9": no sparsity
    assert run_description(RunConfig(method="snip", sparsity=0.98).pruning) == "snip 0.98"
