"""``earlyprune run --tensorboard DIR``: the event files hold, per epoch, the values the run's record holds;
each run writes into DIR/<its key>; the writer is closed on an error too; without the package, one clear
error naming the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from earlyprune.cli import build_parser, main  # noqa: E402
from earlyprune.experiments.records import read_records  # noqa: E402
from earlyprune.tensorboard_log import TensorBoardLog, TensorBoardMissingError  # noqa: E402
from earlyprune.train import EpochRecord  # noqa: E402

TINY = ["--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--epochs", "2",
        "--train-subset", "200", "--device", "cpu", "--threads", "1"]


def _events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _texts(events: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(f"{tag}/text_summary")]


def _run(tmp_path: Path, *flags: str) -> tuple[dict, EventAccumulator]:
    out, board = tmp_path / "runs.jsonl", tmp_path / "tb"
    assert main(["run", *TINY, *flags, "--out", str(out), "--tensorboard", str(board)]) == 0
    (record,) = read_records(out)
    folders = list(board.iterdir())
    assert [f.name for f in folders] == [record["key"]]  # DIR/<run key>, nothing else
    assert list(folders[0].glob("events.out.tfevents.*"))
    return record, _events(folders[0])


def test_a_run_logs_each_epoch_as_its_record_says(tmp_path):
    record, events = _run(tmp_path, "--method", "snip", "--sparsity", "0.8")
    curve = record["curve"]
    assert [e["epoch"] for e in curve] == [1, 2]
    loss = _scalars(events, "train/loss")
    assert [s for s, _ in loss] == [1, 2]
    assert [v for _, v in loss] == pytest.approx([e["train_loss"] for e in curve], rel=1e-6)  # float32
    accuracy = _scalars(events, "test/accuracy")
    assert [s for s, _ in accuracy] == [1, 2]
    assert [v for _, v in accuracy] == pytest.approx([e["test_accuracy"] for e in curve], rel=1e-6)
    assert _scalars(events, "test/loss")[-1][1] == pytest.approx(record["final_metrics"]["loss"], rel=1e-6)
    assert len(_scalars(events, "train/accuracy")) == 2
    # the step schedule (x0.1 at 50% and 75% of 2 epochs: after epochs 1 and 2), read at each epoch's end
    assert [v for _, v in _scalars(events, "lr")] == pytest.approx([0.01, 0.001], rel=1e-6)
    # the model's size after the last epoch is the record's; sparsity over every parameter
    assert _scalars(events, "model/params")[-1][1] == record["params"]
    assert _scalars(events, "model/nonzero_params")[-1][1] == record["nonzero_params"]
    assert _scalars(events, "model/sparsity")[-1][1] == pytest.approx(
        1 - record["nonzero_params"] / record["dense_params"], rel=1e-6)
    # the prune at initialisation: step 0, the masks' sparsity (the record's), method named
    assert _scalars(events, "prune/achieved_sparsity") == [(0, pytest.approx(record["achieved_sparsity"], rel=1e-6))]
    ((step, text),) = _texts(events, "prune")
    assert step == 0 and text.startswith("snip at initialisation") and "0.8000" in text
    assert record["key"] in _texts(events, "settings")[0][1]


def test_an_early_prune_is_logged_at_its_epoch(tmp_path):
    record, events = _run(tmp_path, "--method", "magnitude", "--sparsity", "0.5", "--when", "epoch:1")
    (event,) = record["prune_events"]
    assert event["epoch"] == 1
    assert _scalars(events, "prune/achieved_sparsity") == [(1, pytest.approx(record["achieved_sparsity"], rel=1e-6))]
    assert _scalars(events, "prune/nonzero_params") == [(1, event["nonzero_after"])]
    ((step, text),) = _texts(events, "prune")
    assert step == 1 and text.startswith("magnitude after epoch 1")
    # pruned at the end of epoch 1's training, before its evaluation: epoch 1's size is the pruned one
    sparsity = [v for _, v in _scalars(events, "model/sparsity")]
    assert sparsity[0] > 0.4 and sparsity[0] == pytest.approx(sparsity[1], abs=0.01)


def test_every_metric_of_the_task_is_logged(tmp_path):
    from torch import nn

    record = EpochRecord(3, 0.25, None, 0.5, None, 0.01, 1.0, metric_name="rmse", train_metric=0.5,
                         test_metric=0.7, test_metrics={"loss": 0.49, "rmse": 0.7, "r2": 0.6})
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.bias)  # 2 of its 3 parameters non-zero
    with TensorBoardLog(tmp_path) as board:
        board.epoch(record, model, dense_params=6)
    events = _events(tmp_path)
    assert _scalars(events, "train/rmse") == [(3, 0.5)] and _scalars(events, "test/r2") == [(3, pytest.approx(0.6))]
    assert _scalars(events, "test/rmse") == [(3, pytest.approx(0.7))]
    assert _scalars(events, "test/loss") == [(3, pytest.approx(0.5))]  # the record's, not test_metrics' copy
    assert "train/accuracy" not in events.Tags()["scalars"]
    assert _scalars(events, "model/params") == [(3, 3)]
    assert _scalars(events, "model/sparsity") == [(3, pytest.approx(1 - 2 / 6))]


def test_the_rl_loop_logs_its_epochs(tmp_path):
    pytest.importorskip("gymnasium")
    from earlyprune.experiments.config import RunConfig
    from earlyprune.rl.agent import DQNConfig
    from earlyprune.rl.experiment import run_rl_experiment

    config = RunConfig(dataset="cartpole", model="dqn-mlp", width=0.125, epochs=2, steps_per_epoch=100,
                       batch_size=32, optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="constant",
                       method="random", sparsity=0.5)
    with TensorBoardLog(tmp_path) as board:
        record = run_rl_experiment(config, threads=1, device="cpu", board=board,
                                   dqn=DQNConfig(learning_starts=64, train_every=32, gradient_steps=4,
                                                 buffer_size=1000))
    events = _events(tmp_path)
    returns = _scalars(events, "test/return")
    assert [s for s, _ in returns] == [1, 2]
    assert [v for _, v in returns] == pytest.approx([e["test_metric"] for e in record["curve"]], rel=1e-6)
    assert [v for _, v in _scalars(events, "train/loss")] == pytest.approx(
        [e["train_loss"] for e in record["curve"] if e["train_loss"] is not None], rel=1e-6)
    assert _scalars(events, "prune/achieved_sparsity")[0][0] == 0


def test_each_cell_of_a_sweep_writes_into_its_own_folder(tmp_path, monkeypatch):
    from earlyprune.experiments.store import ResultsStore
    from earlyprune.experiments.sweep import run_sweep

    sweep = tmp_path / "s.toml"
    sweep.write_text(f'results = "{tmp_path / "results"}"\n[recipe]\nepochs = 1\ntrain_subset = 100\nwidth = 0.25\n'
                     '[grid]\ndatasets = ["mnist-sample"]\nmodels = ["lenet300"]\nmethods = ["dense", "random"]\n'
                     'sparsities = [0.5]\n')
    monkeypatch.chdir(tmp_path)
    assert run_sweep(sweep, device="cpu", tensorboard="tb") == 0  # relative: made absolute for the workers
    with ResultsStore(tmp_path / "results") as store:
        records = list(store.records())
    assert sorted(f.name for f in (tmp_path / "tb").iterdir()) == sorted(r["key"] for r in records)
    for record in records:
        events = _events(tmp_path / "tb" / record["key"])
        assert _scalars(events, "train/loss") == [(1, pytest.approx(record["curve"][0]["train_loss"], rel=1e-6))]
        assert ("prune/achieved_sparsity" in events.Tags()["scalars"]) == (record["method"] != "dense")


def test_the_writer_is_closed_when_the_run_fails(tmp_path, monkeypatch):
    from earlyprune.experiments import run

    closed, close = [], TensorBoardLog.close

    def spy(self):
        closed.append(self.log_dir)
        close(self)

    monkeypatch.setattr(TensorBoardLog, "close", spy)

    def fails(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(run, "_run_experiment", fails)
    config = run.RunConfig(dataset="mnist-sample", model="lenet300", epochs=1)
    with pytest.raises(RuntimeError, match="boom"):
        run.run_experiment(config, tensorboard=str(tmp_path), threads=1)
    assert closed == [tmp_path / config.replace(threads=1).key()]


def test_without_the_package_the_error_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now fails as if missing
    out = tmp_path / "runs.jsonl"
    code = main(["run", *TINY, "--out", str(out), "--tensorboard", str(tmp_path / "tb")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install earlyprune[tensorboard]" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "tb").exists()  # refused before anything ran
    with pytest.raises(TensorBoardMissingError):
        TensorBoardLog(tmp_path)


def test_the_help_shows_the_flag():
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for command in ("run", "sweep"):
        text = " ".join(sub.choices[command].format_help().split())
        assert "--tensorboard DIR" in text and "earlyprune[tensorboard]" in text
