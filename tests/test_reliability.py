"""Nothing lost, nothing silent (docs/reliability.md): atomic writes that say ENOSPC and the path, a full
disk (a real tmpfs where the test may mount one, an injected ENOSPC otherwise), records kept when their
destination cannot be written, report merging what it did not write, inputs checked before training,
the thread count in the run key, sweeps that claim cells and stop cleanly on a full disk."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SmallCNN, mlp

from earlyprune.atomic import StorageError, atomic_write
from earlyprune.cli import main
from earlyprune.errors import PruningError
from earlyprune.experiments.config import RunConfig
from earlyprune.experiments.records import append_record, merge_records, read_records
from earlyprune.experiments.store import Claimant, ResultsStore

TINY = ["--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--train-subset", "200",
        "--epochs", "1", "--device", "cpu", "--method", "random", "--sparsity", "0.5"]


def fake_record(key: str, method: str = "random", seed: int = 0, accuracy: float | None = 0.9) -> dict:
    """A finished run's record as the report reads it (no training needed to test where records go)."""
    return {"key": key, "dataset": "mnist-sample", "model": "lenet300", "method": method, "sparsity": 0.5,
            "seed": seed, "when": "init", "structured": False, "final_accuracy": accuracy,
            "final_metric": accuracy, "metric_name": "accuracy", "nonzero_params": 100, "effective_flops": 1000,
            "train_seconds": 1.0, "scoring_seconds": 0.1, "achieved_sparsity": 0.5,
            "curve": [] if accuracy is None else [{"epoch": 1, "test_accuracy": accuracy}]}


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- 1. atomic writes: ENOSPC named with the path, the old file intact ----------------------------------------

def test_an_injected_enospc_is_a_storage_error_naming_the_path_and_the_old_file_stays(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    atomic_write(path, lambda f: f.write(b"old\n"))
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(StorageError, match=rf"ENOSPC \(No space left on device\) writing {path}") as caught:
        atomic_write(path, lambda f: f.write(b"new\n"))
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old\n" and [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs (needs the right to mount: root in the CI container); skipped where it is refused."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount")
    if done.returncode != 0:
        pytest.skip(f"may not mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=20)


def test_a_real_full_disk_keeps_the_records_and_says_enospc(full_disk):
    out = full_disk / "runs.jsonl"
    append_record(out, fake_record("first"))
    with pytest.raises(StorageError, match=rf"ENOSPC .*{out}"):
        append_record(out, {**fake_record("huge"), "blob": "x" * 400_000})
    assert [r["key"] for r in read_records(out)] == ["first"]  # the file as it was, no torn line

    results = full_disk / "store"
    stored = 0
    with pytest.raises(StorageError, match=rf"ENOSPC .*results store {results / 'results.sqlite'}"):
        with ResultsStore(results) as store:
            for i in range(10_000):
                store.add({**fake_record(f"k{i}"), "blob": "y" * 2000})
                stored += 1
    assert stored > 0
    with ResultsStore(results) as store:  # what was stored is intact
        assert store.integrity_ok() and len(store.keys()) == stored


class _FullDatabase:
    """A connection whose writes fail as SQLite's do on a full disk, and whose rollback then fails too
    (SQLite has rolled back already)."""

    def __init__(self, real):
        self.real = real
        self.in_transaction = False

    def execute(self, sql, *args):
        if sql.startswith("INSERT INTO curves") or sql.startswith("INSERT OR IGNORE INTO runs"):
            raise sqlite3.OperationalError("database or disk is full")
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")
        return self.real.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_failing_rollback_does_not_hide_the_disk_full_error(tmp_path):
    with ResultsStore(tmp_path) as store:
        store._db = _FullDatabase(store._db)
        store._db.in_transaction = True  # as sqlite3 reports it before its own rollback
        with pytest.raises(StorageError, match="ENOSPC.*results store") as caught:
            store.add(fake_record("k"))
        assert "cannot rollback" not in str(caught.value)
        store._db = store._db.real


def test_a_corrupt_store_is_named_by_report_and_run(tmp_path, capsys):
    (tmp_path / "results.sqlite").write_bytes(b"not a database at all " * 200)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results.sqlite'} is not a readable results store" in err and "Traceback" not in err


# --- 1. report never erases what it did not write ------------------------------------------------------------

def test_report_merges_results_jsonl_one_record_per_key(tmp_path, capsys):
    with ResultsStore(tmp_path) as store:
        for i, method in enumerate(("random", "magnitude")):
            store.add(fake_record(f"s{i}", method=method))
    foreign = [fake_record("from-run", method="snip"), fake_record("s0", method="random")]  # s0: also stored
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in foreign) + '{"key": "torn')
    assert main(["report", str(tmp_path)]) == 0
    keys = [r["key"] for r in read_records(tmp_path / "results.jsonl")]
    assert sorted(keys) == ["from-run", "s0", "s1"]  # kept, merged, nothing twice
    assert (tmp_path / "results.jsonl.unreadable").read_text() == '{"key": "torn\n'  # moved aside, not lost
    import csv

    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert sorted(r["key"] for r in rows) == ["from-run", "s0", "s1"]
    assert "1 record(s) that are not in this store" in (tmp_path / "report.md").read_text()


def test_merge_keeps_keyless_and_foreign_records_in_their_order(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"note": 1}\n{"key": "a", "v": 1}\n{"key": "a", "v": 2}\n')
    merged, elsewhere, unreadable = merge_records(path, [{"key": "b"}])
    assert merged == [{"note": 1}, {"key": "a", "v": 1}, {"key": "b"}] and (elsewhere, unreadable) == (2, 0)


def test_report_of_a_store_with_only_epoch_0_runs_is_one_clear_error(tmp_path, capsys):
    with ResultsStore(tmp_path) as store:
        store.add(fake_record("e0", accuracy=None))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only runs that measured nothing (epochs = 0" in err and "Traceback" not in err


# --- 1. run --out: checked before training, the record kept when it cannot be written ------------------------

@pytest.fixture
def no_training(monkeypatch):
    from earlyprune.experiments import run

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(run, "run_experiment", refuse)


def test_run_out_a_directory_is_refused_before_training(tmp_path, capsys, no_training):
    assert main(["run", *TINY, "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--threads", "-1"], "threads must be an integer >= 1, got -1"),
    (["--threads", "0"], "threads must be an integer >= 1, got 0"),
    (["--device", "meta"], "nothing can train on the meta device"),
    (["--train-subset", "0"], "train_subset must be an integer >= 1, got 0"),
])
def test_bad_flags_are_refused_before_training(tmp_path, capsys, no_training, flags, message):
    assert main(["run", *TINY, "--out", str(tmp_path / "r.jsonl"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_finished_record_is_kept_when_out_cannot_be_written(tmp_path, capsys, monkeypatch):
    from earlyprune.experiments import records, run

    out = tmp_path / "runs.jsonl"
    monkeypatch.setattr(run, "run_experiment", lambda config, **kw: fake_record(config.key(), seed=config.seed))
    real_append = records.append_record

    def full_for_out(path, record):
        if Path(path) == out:
            raise StorageError(errno.ENOSPC, f"ENOSPC (No space left on device) writing {path}")
        real_append(path, record)

    monkeypatch.setattr(records, "append_record", full_for_out)
    assert main(["run", *TINY, "--out", str(out), "--store", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert f"could not write the record: {out}: ENOSPC" in err
    assert f"kept in {tmp_path / 'store' / 'results.sqlite'}" in err
    with ResultsStore(tmp_path / "store") as store:
        assert len(store.keys()) == 1

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # no store: a fallback file
    (tmp_path / "tmp").mkdir()
    assert main(["run", *TINY, "--out", str(out), "--seed", "1"]) == 1
    err = capsys.readouterr().err
    (fallback,) = (tmp_path / "tmp").glob("earlyprune-unsaved-*.jsonl")
    assert f"kept in {fallback}" in err and list(read_records(fallback))[0]["seed"] == 1


def test_a_run_killed_between_out_and_the_store_is_completed_not_run_again(tmp_path, capsys, monkeypatch):
    from earlyprune.experiments import run

    out, store = tmp_path / "runs.jsonl", tmp_path / "store"
    key = run.with_threads(RunConfig(dataset="mnist-sample", model="lenet300", width=0.25, train_subset=200,
                                     epochs=1, method="random", sparsity=0.5), 1).key()
    append_record(out, fake_record(key))  # what a run killed after writing --out leaves
    monkeypatch.setattr(run, "run_experiment", lambda *a, **k: pytest.fail("ran again"))
    args = ["run", *TINY, "--threads", "1", "--out", str(out), "--store", str(store), "--skip-existing"]
    assert main(args) == 0 and "skipped" in capsys.readouterr().out
    assert [r["key"] for r in read_records(out)] == [key]
    with ResultsStore(store) as results:
        assert results.keys() == {key}  # copied into the store


# --- 3. inputs checked before any epoch ---------------------------------------------------------------------

def write_mnist(folder: Path, test_label: int) -> Path:
    from earlyprune.data.idx import write_idx

    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{stem}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        labels = np.arange(n) % 10
        if stem == "t10k":
            labels[7] = test_label
        write_idx(raw / f"{stem}-labels-idx1-ubyte", labels)
    return folder


def test_a_label_out_of_range_is_refused_when_the_data_is_read(tmp_path, capsys, monkeypatch):
    from earlyprune.data import DataFormatError, load_dataset
    from earlyprune.experiments import run

    data = write_mnist(tmp_path / "data", test_label=42)
    with pytest.raises(DataFormatError, match=r"'mnist': 1 of its class labels lie outside \[0, 10\) \(e.g. 42\)"):
        load_dataset("mnist", data_dir=data, cache_dir=tmp_path / "cache")
    monkeypatch.setenv("EARLYPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run, "train", lambda *a, **k: pytest.fail("training started"))
    args = ["run", "--dataset", "mnist", "--data-dir", str(data), "--model", "lenet300", "--width", "0.25",
            "--method", "dense", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r.jsonl")]
    assert main(args) == 2
    assert "(e.g. 42)" in capsys.readouterr().err


class _Split:
    """A split of 12 classes of 8x8 images."""

    name, task, num_classes = "twelve", "classification", 12

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets

    def loader(self, batch_size, **_):
        return [(self.inputs[i:i + batch_size], self.targets[i:i + batch_size])
                for i in range(0, len(self.targets), batch_size)]


def test_the_model_must_fit_the_labels_and_the_inputs():
    from earlyprune.preflight import check_model_fits
    from earlyprune.tasks import get

    split = _Split(torch.randn(24, 1, 8, 8), torch.arange(24) % 12)
    with pytest.raises(PruningError, match=r"'twelve': targets range over \[0, 11\] but the model gives 4 outputs"):
        check_model_fits(SmallCNN(classes=4), split, get("classification"))
    check_model_fits(SmallCNN(classes=12), split, get("classification"))  # fits
    with pytest.raises(PruningError, match=r"cannot take this dataset's inputs: one example \(of shape \(1, 8, 8\)"):
        check_model_fits(mlp((10, 12)), split, get("classification"))


def test_frozen_and_meta_models_get_a_hint():
    from earlyprune.preflight import check_trainable

    frozen = SmallCNN().requires_grad_(False)
    with pytest.raises(PruningError, match="every parameter of the model is frozen"):
        check_trainable(frozen)
    with pytest.raises(PruningError, match="'meta' device"):
        check_trainable(SmallCNN().to("meta"))


def test_train_gives_the_hints_too():
    from earlyprune.train import TrainConfig, train

    batch = [(torch.randn(8, 1, 8, 8), torch.arange(8) % 4)]
    with pytest.raises(PruningError, match=r"cannot take the training inputs: a batch of shape \(8, 1, 8, 8\)"):
        train(mlp((10, 4)), batch, None, TrainConfig(epochs=1))
    with pytest.raises(PruningError, match="frozen"):
        train(SmallCNN().requires_grad_(False), batch, None, TrainConfig(epochs=1))
    with pytest.raises(PruningError, match="'meta' device"):
        train(SmallCNN().to("meta"), batch, None, TrainConfig(epochs=1))


def test_early_pruner_checks_method_data_and_optimizer_when_built():
    from earlyprune import EarlyPruner

    model, other = SmallCNN(), SmallCNN()
    with pytest.raises(PruningError, match="the optimizer holds none of the model's weights"):
        EarlyPruner(model, "magnitude", 0.5, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    partial = torch.optim.SGD(model.classifier.parameters(), lr=0.1)
    with pytest.raises(PruningError, match="does not hold 2 of the model's trainable weights"):
        EarlyPruner(model, "magnitude", 0.5, optimizer=partial)
    with pytest.raises(PruningError, match="needs scoring data"):
        EarlyPruner(model, "snip", 0.5)
    with pytest.raises((PruningError, ValueError), match="unknown"):
        EarlyPruner(model, "prune-everything", 0.5)


def test_masks_of_scores_are_refused_on_load(tmp_path):
    from earlyprune.masks import Masks

    state = Masks({"w": torch.ones(2, 2, dtype=torch.bool)}).state_dict()
    state["masks"]["w"] = torch.full((2, 2), 0.3)
    with pytest.raises(PruningError, match="values other than 0 and 1"):
        Masks.load(state)


# --- 4. the thread count is keyed; sweeps: paths, dry run, claims ----------------------------------------------

def test_the_thread_count_is_part_of_the_key_and_the_record(tmp_path, monkeypatch):
    from earlyprune.experiments import run

    assert RunConfig(threads=1).key() != RunConfig(threads=2).key()
    assert RunConfig().key() == RunConfig(threads=None).key()  # stored keys of older runs unchanged
    seen = []
    monkeypatch.setattr(run, "run_experiment", lambda config, **kw: seen.append(config) or fake_record(config.key()))
    for threads in ("1", "2"):
        assert main(["run", *TINY, "--threads", threads, "--out", str(tmp_path / "r.jsonl")]) == 0
    assert [c.threads for c in seen] == [1, 2]
    assert len({r["key"] for r in read_records(tmp_path / "r.jsonl")}) == 2
    assert run.with_threads(RunConfig()).threads == torch.get_num_threads()
    assert run.with_threads(RunConfig(), 3).threads == 3
    assert run.with_threads(RunConfig(threads=2), 3).threads == 2  # a sweep cell's own count is its key's


def sweep_file(folder: Path, results: str = "res", methods=("random", "magnitude"), extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "s.toml"
    path.write_text(f'results = "{results}"\n[recipe]\nepochs = 1\ntrain_subset = 200\nwidth = 0.25\n{extra}'
                    f'[grid]\ndatasets = ["mnist-sample"]\nmodels = ["lenet300"]\nmethods = {json.dumps(list(methods))}\n'
                    'sparsities = [0.5]\nseeds = [0]\n')
    return path


def test_sweep_threads_come_from_the_file_never_from_jobs(tmp_path):
    from earlyprune.experiments.sweep import load_sweep

    cells, _ = load_sweep(sweep_file(tmp_path / "a"))
    assert {c.threads for c in cells} == {1}
    cells, _ = load_sweep(sweep_file(tmp_path / "b", extra="[resources]\nnum_cpus = 2\n"))
    assert {c.threads for c in cells} == {2}
    cells, _ = load_sweep(sweep_file(tmp_path / "c", extra="threads = 3\n"), num_cpus=2)
    assert {c.threads for c in cells} == {3}


def test_sweep_paths_dry_run_and_a_directory_config(tmp_path, monkeypatch, capsys):
    from earlyprune.experiments.sweep import load_sweep

    config = sweep_file(tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    _, results = load_sweep(config)
    assert results == str(tmp_path / "conf" / "res")  # against the TOML's folder, not the current one
    assert main(["sweep", str(config), "--dry-run"]) == 0
    assert "2 to run" in capsys.readouterr().out and not (tmp_path / "conf" / "res").exists()
    assert main(["sweep", str(tmp_path / "conf")]) == 2
    err = capsys.readouterr().err
    assert "is a directory, not a sweep file" in err and "Traceback" not in err


def test_a_claim_of_a_dead_or_silent_process_expires(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = Claimant.current()
    with ResultsStore(tmp_path) as store:
        assert store.claim("a", Claimant(me.host, dead.pid, None))
        assert store.claim("a", me)  # its owner is gone: taken over
        assert not store.claim("a", Claimant("elsewhere", 1, None))  # a live claim is respected
        assert store.claim("b", Claimant("elsewhere", 1, None), ttl=-1.0)  # a claim whose heartbeat stopped...
        assert store.claim("b", me)  # ...expires
        store.add(fake_record("a"))
        assert "a" not in store.claims() and not store.claim("a", me)  # finished: cleared, never claimed again


def test_a_full_disk_stops_the_sweep_cleanly_listing_the_cells_left(tmp_path, monkeypatch, capsys):
    from earlyprune.experiments import run
    from earlyprune.experiments.sweep import load_sweep

    monkeypatch.setattr(run, "run_experiment", lambda config, **kw: fake_record(config.key(), config.method))
    real_add, calls = ResultsStore.add, []

    def full_after_one(self, record):
        calls.append(record["key"])
        if len(calls) > 1:
            raise StorageError(errno.ENOSPC, f"ENOSPC (No space left on device) writing the results store {self.path}")
        return real_add(self, record)

    monkeypatch.setattr(ResultsStore, "add", full_after_one)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    config = sweep_file(tmp_path, methods=("random", "magnitude", "snip"))
    cells, results = load_sweep(config)
    assert main(["sweep", str(config), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "stopped: ENOSPC (No space left on device) writing the results store" in err
    assert "2 cell(s) remain" in err and all(c.key() in err for c in cells[1:])
    assert f"the record of cell {cells[1].key()} is kept in" in err
    with ResultsStore(results) as store:
        assert store.keys() == {cells[0].key()} and store.claims() == {}  # no claim left behind
