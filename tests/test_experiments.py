"""earlyprune run / sweep / report: records, determinism, resumable sweeps, the results store."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_sweep_resumes_with_every_cell_once, store_count
import torch

import earlyprune as ep
from earlyprune import models
from earlyprune.cli import main
from earlyprune.data import load_dataset
from earlyprune.experiments.config import RunConfig
from earlyprune.experiments.records import append_record, read_records
from earlyprune.experiments.store import ResultsStore
from earlyprune.experiments.sweep import ConfigError, load_sweep

TINY = dict(dataset="mnist-sample", model="lenet300", epochs=1, batch_size=100, train_subset=500, width=0.25)


def test_run_writes_a_complete_record(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    code = main(["run", "--dataset", "mnist-sample", "--model", "lenet5", "--method", "snip", "--sparsity", "0.9",
                 "--epochs", "1", "--train-subset", "600", "--width", "0.5", "--out", str(out)])
    assert code == 0
    (record,) = list(read_records(out))
    for key in ["dataset", "model", "method", "sparsity", "seed", "achieved_sparsity", "params", "nonzero_params",
                "dense_flops", "effective_flops", "final_accuracy", "best_accuracy", "scoring_seconds",
                "train_seconds", "peak_memory_mb", "earlyprune_version", "torch_version", "cpu_allocator", "curve"]:
        assert key in record, key
    assert record["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert record["cpu_allocator"] == "system default (EARLYPRUNE_MALLOC=system)"  # as conftest sets it
    assert record["effective_flops"] < record["dense_flops"]
    assert 0.1 < record["final_accuracy"] <= 1.0


def test_skip_existing_runs_nothing_when_the_store_has_the_run(tmp_path, capsys):
    args = ["run", "--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--method", "random",
            "--sparsity", "0.5", "--epochs", "1", "--train-subset", "300", "--device", "cpu",
            "--out", str(tmp_path / "runs.jsonl"), "--store", str(tmp_path)]
    assert main(args + ["--skip-existing"]) == 0  # not there yet: runs
    assert main(args + ["--skip-existing"]) == 0  # there: skipped
    assert "skipped" in capsys.readouterr().out
    assert len(list(read_records(tmp_path / "runs.jsonl"))) == 1
    with pytest.raises(SystemExit, match="--store"):
        main([a for a in args if a not in ("--store", str(tmp_path))] + ["--skip-existing"])


def test_device_names_resolve_or_explain():
    from earlyprune.experiments.run import resolve_device

    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RuntimeError, match="cpu, cuda, cuda:N or auto"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cpu"):
            resolve_device("cuda")


def test_under_torchrun_each_process_gets_its_own_gpu(monkeypatch):
    from earlyprune.experiments.run import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # names only: nothing is allocated
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match="same GPU"):
        resolve_device("cuda:0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_same_seed_gives_identical_masks_and_first_epoch_loss():
    from earlyprune.train import TrainConfig, train

    results = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        train_split, test_split = load_dataset("mnist-sample")
        train_split = train_split.subset(400)
        model = models.create("lenet5", width=0.5)
        masks = ep.prune(model, "snip", 0.95, data=train_split.loader(100, shuffle=True, seed=1))
        out = train(model, train_split.loader(100, shuffle=True, seed=0), None, TrainConfig(epochs=1, progress=False))
        results.append((masks, out.history[0].train_loss))
    (m1, l1), (m2, l2), (m3, l3) = results
    assert all(torch.equal(m1[n], m2[n]) for n in m1)
    assert l1 == l2
    # and the seed matters: another one gives other masks and another loss
    assert not all(torch.equal(m1[n], m3[n]) for n in m1) and l1 != l3


def test_cli_bad_input_is_one_clear_line_not_a_traceback(tmp_path, capsys):
    base = ["run", "--epochs", "0", "--out", str(tmp_path / "r.jsonl")]
    for extra, expected in [(["--model", "lenet7"], "unknown model 'lenet7'; known models: lenet300"),
                            (["--dataset", "imagenet"], "unknown dataset 'imagenet'; known datasets: mnist"),
                            (["--method", "snap"], "known methods: random, .*crop-it, activation_density, or 'dense'"),
                            (["--device", "tpu"], "unknown device 'tpu'"),
                            (["--method", "snip", "--prune-every", "2"], "--prune-every applies to"),
                            (["--method", "dense", "--structured"], "do not apply to --method dense"),
                            (["--method", "activation_density", "--when", "early"], "--when does not apply")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert __import__("re").search(expected, err), err
    store = tmp_path / "store"
    store.mkdir()
    (store / "results.sqlite").write_bytes(b"not a database at all" * 10)
    assert main(["report", str(store)]) == 2
    assert "not a database" in capsys.readouterr().err


def test_the_model_registry_is_reachable_from_the_package():
    model = ep.models.create("resnet20", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 272_474


def test_peak_memory_is_each_runs_own():
    import numpy as np

    from earlyprune.train import peak_memory_mb, reset_peak_memory

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident size cannot be reset on this system")
    reset_peak_memory()
    base = peak_memory_mb()
    big = np.ones(40_000_000)  # 320 MB touched
    assert peak_memory_mb() > base + 250
    del big
    reset_peak_memory()
    assert peak_memory_mb() < base + 100  # a later run does not inherit the earlier peak


def test_append_record_never_tears_existing_records(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    append_record(path, {"a": 1})

    def crash(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        append_record(path, {"a": 2})
    monkeypatch.undo()
    assert [r["a"] for r in read_records(path)] == [1]
    left = {p.name for p in tmp_path.iterdir()} - {"r.jsonl.lock"}  # the lock file of parallel appends stays
    assert left == {"r.jsonl"}  # no temp file left behind


def write_config(path: Path, results: Path, methods=("random", "magnitude"), sparsities=(0.5, 0.9), seeds=(0, 1)):
    path.write_text(
        f'results = "{results}"\n\n[recipe]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items() if k not in ("dataset", "model"))
        + "\n[grid]\n"
        + 'datasets = ["mnist-sample"]\nmodels = ["lenet300"]\n'
        + f"methods = {json.dumps(list(methods))}\nsparsities = {json.dumps(list(sparsities))}\n"
        + f"seeds = {json.dumps(list(seeds))}\n"
    )


def test_sweep_config_errors_name_line_and_key(tmp_path):
    cfg = tmp_path / "s.toml"
    write_config(cfg, tmp_path / "res")
    text = cfg.read_text()
    cfg.write_text(text.replace("epochs = 1", "epochz = 1"))
    with pytest.raises(ConfigError, match=r"s.toml:\d+: .*unknown setting 'epochz'"):
        load_sweep(cfg)
    cfg.write_text(text.replace('"random"', '"randm"'))
    with pytest.raises(ConfigError, match=r"s.toml:\d+: unknown method 'randm'; valid: dense, random, magnitude"):
        load_sweep(cfg)
    cfg.write_text(text.replace('models = ["lenet300"]', 'models = ["lenet301"]'))
    with pytest.raises(ConfigError, match="unknown model 'lenet301'; valid: lenet300"):
        load_sweep(cfg)
    cfg.write_text(text.replace("epochs = 1", "epochs = = 1"))
    with pytest.raises(ConfigError, match="not valid TOML.*line"):
        load_sweep(cfg)


def test_sweep_cells_are_the_grid_with_dense_once(tmp_path):
    cfg = tmp_path / "s.toml"
    write_config(cfg, tmp_path / "res", methods=("dense", "snip"), sparsities=(0.5, 0.9), seeds=(0, 1))
    cells, results = load_sweep(cfg)
    assert results == str(tmp_path / "res")
    assert sorted((c.method, c.sparsity, c.seed) for c in cells) == sorted(
        [("dense", 0.0, 0), ("dense", 0.0, 1)] + [("snip", s, seed) for s in (0.5, 0.9) for seed in (0, 1)]
    )


def test_sweep_killed_with_sigkill_resumes_with_every_cell_once(tmp_path):
    results = tmp_path / "res"
    cfg = tmp_path / "s.toml"
    write_config(cfg, results, methods=("random", "magnitude", "snip"), sparsities=(0.5, 0.9), seeds=(0,))
    command = [sys.executable, "-m", "earlyprune.cli", "sweep", str(cfg)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while store_count(results) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = store_count(results)
    assert 2 <= partial < 6, "the sweep should have been killed part-way"
    assert_sweep_resumes_with_every_cell_once(command, cfg, results, partial)


def _writer(results: str, worker: int, count: int) -> None:
    with ResultsStore(results) as store:
        for i in range(count):
            store.add({"key": f"w{worker}-{i}", "dataset": "d", "model": "m", "method": "x", "sparsity": 0.5,
                       "seed": i, "final_accuracy": 0.5, "curve": [{"epoch": 1, "test_accuracy": 0.5}]})


def test_two_workers_writing_at_once_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(tmp_path), w, 150)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    with ResultsStore(tmp_path) as store:
        assert len(store.keys()) == 300 and store.integrity_ok()
        assert store.add({"key": "w0-0", "curve": []}) is False  # never twice


def test_the_stores_sparsity_column_is_null_where_the_run_had_no_target(tmp_path):
    """Dense, activation density and cost-budget runs carry the unused default sparsity (0.9) in their
    settings; the column users query holds the target, so those are NULL, the rest their sparsity."""
    runs = {"dense": {"method": "dense"}, "ad": {"method": "activation_density"},
            "budget": {"method": "crop", "structured": True, "budget": "flops=0.25"},
            "snip": {"method": "snip", "sparsity": 0.98}, "legacy": {}}
    with ResultsStore(tmp_path) as store:
        for key, fields in runs.items():
            store.add({"key": key, "sparsity": 0.9, **fields})
        rows = dict(store._db.execute("SELECT key, sparsity FROM runs").fetchall())
    assert rows == {"dense": None, "ad": None, "budget": None, "snip": 0.98, "legacy": 0.9}


def _appender(path: str, worker: int, count: int) -> None:
    for i in range(count):
        append_record(path, {"worker": worker, "i": i})


def test_parallel_runs_appending_to_one_jsonl_lose_no_record(tmp_path):
    path = str(tmp_path / "runs.jsonl")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_appender, args=(path, w, 60)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    seen = sorted((r["worker"], r["i"]) for r in read_records(path))
    assert seen == [(w, i) for w in range(3) for i in range(60)]


def test_report_writes_markdown_and_plots(tmp_path):
    with ResultsStore(tmp_path) as store:
        for method, sparsity in [("dense", 0.0), ("snip", 0.9), ("snip", 0.99), ("random", 0.9)]:
            for seed in (0, 1):
                store.add({"key": f"{method}{sparsity}{seed}", "dataset": "mnist", "model": "lenet5",
                           "method": method, "sparsity": sparsity, "seed": seed, "when": "init",
                           "final_accuracy": 0.9 + 0.01 * seed, "nonzero_params": 1000, "effective_flops": 1e6,
                           "train_seconds": 10.0, "scoring_seconds": 1.0, "achieved_sparsity": sparsity})
        # a method without a sparsity target (its recorded sparsity is a default and means nothing)
        store.add({"key": "ad", "dataset": "mnist", "model": "lenet5", "method": "activation_density",
                   "sparsity": 0.9, "seed": 0, "when": "init", "structured": False, "final_accuracy": 0.8,
                   "nonzero_params": 100, "effective_flops": 1e5, "train_seconds": 5.0, "achieved_sparsity": 0.95,
                   "training_flops": 3e15})
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| snip | 90.50 ± 0.71 | 90.50 ± 0.71 |" in text
    assert "Dense reference: 90.50 ± 0.71%" in text
    assert "| activation_density |" not in text.split("Size, cost")[0]  # not in the by-target table
    assert "activation_density (no target; it reached 95.00% weight sparsity): accuracy (%) 80.00" in text
    assert "| activation_density | 95% | 80.00 ± 0.00 (n=1) | 100 | 0.100 | 3.0000 | 5.0 |" in text
    assert "| random | 90% | 90.50 ± 0.71 | 1,000 | 1.000 | – | 11.0 |" in text  # not recorded: not 0
    assert (tmp_path / "accuracy_vs_training_flops.png").stat().st_size > 0
    for name in ("accuracy_vs_sparsity.png", "accuracy_vs_time.png", "results.csv", "results.jsonl"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("extra, kind", [
    (["--method", "crop", "--sparsity", "0.9", "--when", "epoch:2"], "early"),
    (["--method", "crop", "--sparsity", "0.5", "--when", "early", "--structured"], "structured"),
    (["--method", "activation_density", "--prune-every", "1"], "density"),
])
def test_run_prunes_during_training_and_records_what_it_did(tmp_path, extra, kind):
    out = tmp_path / "runs.jsonl"
    code = main(["run", "--dataset", "mnist-sample", "--model", "lenet5", "--width", "0.5", "--epochs", "3",
                 "--train-subset", "400", "--batch-size", "50", "--out", str(out), *extra])
    assert code == 0
    (record,) = list(read_records(out))
    events = record["prune_events"]
    assert len(events) >= 1
    assert record["training_flops"] > 0 and record["curve"][-1]["epoch"] == 3
    if kind == "early":
        assert [e["epoch"] for e in events] == [2] and record["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
        assert record["nonzero_params"] < record["dense_params"] and record["params"] == record["dense_params"]
    elif kind == "structured":
        assert events[0]["epoch"] == 2  # EarlyCroP's trigger capped at half the epochs (at least 2)
        assert record["params"] < record["dense_params"]
    else:
        # the width of every layer before and after each resize, and fewer parameters at the end
        assert events[0]["epoch"] == 1 and set(events[0]["widths_before"]) == set(events[0]["widths_after"])
        assert any(events[0]["widths_after"][k] < v for k, v in events[0]["widths_before"].items())
        assert record["params"] < record["dense_params"]


def test_a_model_alias_is_the_same_run_as_its_canonical_name():
    assert RunConfig(model="LeNet-5").model == "lenet5"
    assert RunConfig(model="lenet-5").key() == RunConfig(model="lenet5").key()
    assert RunConfig(model="resnet-20").key() != RunConfig(model="lenet5").key()


def test_on_collapse_reaches_early_pruning_too():
    """--on-collapse was passed to the prune at init only: an early prune kept the default guard whatever
    the run said."""
    from earlyprune.experiments.run import run_experiment

    settings = dict(TINY, epochs=2, method="random", sparsity=0.999, when="epoch:1")
    with pytest.raises(ep.LayerCollapseError):
        run_experiment(RunConfig(**settings), progress=False)
    record = run_experiment(RunConfig(**settings, on_collapse="allow"), progress=False)
    assert record["collapsed"]  # kept, as asked, and named
