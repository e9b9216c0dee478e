"""earlyprune sweep under bad input and failures: values checked with their line, failing cells recorded
and retried, workers ending with a killed sweep, missing datasets found before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alive, assert_sweep_resumes_with_every_cell_once, descendants, store_count

from earlyprune.cli import main
from earlyprune.experiments.store import ResultsStore
from earlyprune.experiments.sweep import ConfigError, load_sweep, run_sweep

RECIPE = {"epochs": 1, "batch_size": 100, "train_subset": 300, "width": 0.25}


def write(path: Path, results: Path, recipe=None, methods=("random", "magnitude"), sparsities=(0.5,), seeds=(0,),
          models=("lenet300",), datasets=("mnist-sample",), extra_grid: str = "") -> Path:
    recipe = RECIPE if recipe is None else recipe
    path.write_text(
        f'results = "{results}"\n\n[recipe]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in recipe.items())
        + "\n[grid]  # the axes\n"
        + f"datasets = {json.dumps(list(datasets))}\nmodels = {json.dumps(list(models))}\n"
        + f"methods = {json.dumps(list(methods))}\nsparsities = {json.dumps(list(sparsities))}\n"
        + f"seeds = {json.dumps(list(seeds))}\n" + extra_grid
    )
    return path


def line_of(path: Path, start: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(start))


# --- 1. every value is checked, and the error names the line and the key ------------------------------------

@pytest.mark.parametrize("recipe_extra, grid_extra, key, expected", [
    ({"epochs": "two"}, "", "epochs =", "epochs must be an integer >= 0, got 'two'"),
    ({"batch_size": 0}, "", "batch_size =", "batch_size must be an integer >= 1"),
    ({"lr": "fast"}, "", "lr =", "lr must be a number > 0, got 'fast'"),
    ({"lr": -0.1}, "", "lr =", "lr must be a number > 0"),
    ({"momentum": -1}, "", "momentum =", "momentum must be a number >= 0"),
    ({"width": 0}, "", "width =", "width must be a number > 0"),
    ({"scope": "everything"}, "", "scope =", "unknown scope 'everything'; valid: global, layer"),
    ({"optimizer": "rmsprop"}, "", "optimizer =", "unknown optimizer 'rmsprop'; valid: sgd, adam, adamw"),
    ({"lr_schedule": "linear"}, "", "lr_schedule =", "unknown lr_schedule 'linear'; valid: step, cosine"),
    ({"rule": "median"}, "", "rule =", "unknown rule 'median'"),
    ({"init": "xavier"}, "", "init =", "unknown init 'xavier'"),
    ({"augment": 1}, "", "augment =", "augment must be true or false"),
    ({"iterations": 0}, "", "iterations =", "iterations must be an integer >= 1"),
    ({"train_subset": 1.5}, "", "train_subset =", "train_subset must be an integer >= 1"),
    ({"when": "later"}, "", "when =", "when must be 'init', 'early' or 'epoch:N'"),
    ({"model": "lenet301"}, "", "model =", "unknown model 'lenet301'"),
    ({}, "when = [\"later\"]\n", "when = [", r"\[grid\] when: when must be 'init', 'early' or 'epoch:N'"),
    ({}, "when = [\"epoch:0\"]\n", "when = [", "got 'epoch:0'"),
    ({}, "structured = [\"yes\"]\n", "structured =", "structured must be true or false"),
])
def test_malformed_values_name_their_line_and_key(tmp_path, recipe_extra, grid_extra, key, expected):
    cfg = write(tmp_path / "s.toml", tmp_path / "res", recipe={**RECIPE, **recipe_extra}, extra_grid=grid_extra)
    with pytest.raises(ConfigError, match=rf"s\.toml:{line_of(cfg, key)}: .*{expected}"):
        load_sweep(cfg)


@pytest.mark.parametrize("axis, values, expected", [
    ("sparsities", [0.5, 1.5], r"\[grid\] sparsities: sparsity must be in \[0, 1\).*1\.5"),
    ("sparsities", ["0.5"], r"\[grid\] sparsities: sparsity must be a number"),
    ("seeds", [0, -1], r"\[grid\] seeds: seed must be an integer >= 0, got -1"),
    ("seeds", [0.5], r"\[grid\] seeds: seed must be an integer"),
    ("datasets", ["imagenet"], "unknown dataset 'imagenet'; valid: mnist"),
    ("methods", ["snip", "prune-all"], "unknown method 'prune-all'; valid: dense"),
])
def test_malformed_grid_values_name_their_line_and_key(tmp_path, axis, values, expected):
    kwargs = {axis: values}
    cfg = write(tmp_path / "s.toml", tmp_path / "res", **kwargs)
    with pytest.raises(ConfigError, match=rf"s\.toml:{line_of(cfg, axis + ' =')}: {expected}"):
        load_sweep(cfg)


def test_a_key_set_in_recipe_and_grid_is_located_in_the_right_section(tmp_path):
    cfg = write(tmp_path / "s.toml", tmp_path / "res", recipe={**RECIPE, "when": "init"},
                extra_grid='when = ["init", "soon"]\n')
    lines = [i for i, line in enumerate(cfg.read_text().splitlines(), 1) if line.startswith("when =")]
    assert len(lines) == 2
    with pytest.raises(ConfigError, match=rf"s\.toml:{lines[1]}: \[grid\] when"):
        load_sweep(cfg)


def test_results_and_sections_of_the_wrong_type_are_named(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('results = 3\n[grid]\ndatasets = ["mnist-sample"]\nmodels = ["lenet5"]\nmethods = ["dense"]\n')
    with pytest.raises(ConfigError, match=r"s\.toml:1: results must be a directory name"):
        load_sweep(cfg)
    cfg.write_text('results = "r"\nrecipe = 5\n[grid]\ndatasets = ["mnist-sample"]\nmodels = ["lenet5"]\n'
                   'methods = ["dense"]\n')
    with pytest.raises(ConfigError, match=r"s\.toml:2: recipe must be a table"):
        load_sweep(cfg)


def test_lr_fast_fails_the_dry_run_with_its_line(tmp_path, capsys):
    cfg = write(tmp_path / "s.toml", tmp_path / "res", recipe={**RECIPE, "lr": "fast"})
    assert main(["sweep", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"s.toml:{line_of(cfg, 'lr =')}: [recipe] lr must be a number > 0, got 'fast'" in err


def test_model_aliases_and_dataset_case_are_accepted_like_earlyprune_run(tmp_path):
    cfg = write(tmp_path / "s.toml", tmp_path / "res", recipe={**RECIPE, "model": "LeNet-5-Caffe"},
                models=("lenet-5", "lenet5", "lenet-300-100"), datasets=("MNIST-sample",))
    cells, _ = load_sweep(cfg)
    assert sorted({c.model for c in cells}) == ["lenet300", "lenet5"]  # canonical names, aliases merged
    assert len(cells) == 2 * 2  # 2 models x 2 methods
    assert {c.dataset for c in cells} == {"mnist-sample"}


def test_valid_examples_still_load():
    root = Path(__file__).parent.parent
    for example in sorted(root.glob("examples/*.toml")):
        cells, results = load_sweep(example)
        assert cells and results
        # results= is read against the TOML's folder: each example writes under the repository's results/,
        # where the documented `earlyprune report results/<name>` (run from the repository) reads it
        assert Path(results).resolve().parent == (root / "results").resolve(), example


# --- 2. a failing cell is reported and recorded; the others run; it is retried next time -------------------

def test_a_failing_cell_does_not_stop_the_sweep_and_is_retried(tmp_path, capsys, monkeypatch):
    from earlyprune.experiments import run as run_module

    results = tmp_path / "res"
    cfg = write(tmp_path / "s.toml", results, methods=("random", "magnitude", "snip"))
    real = run_module.run_experiment

    def flaky(config, **kwargs):
        if config.method == "magnitude":
            raise RuntimeError("simulated out of memory")
        return real(config, **kwargs)

    monkeypatch.setattr(run_module, "run_experiment", flaky)
    assert main(["sweep", str(cfg), "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    cells, _ = load_sweep(cfg)
    bad = next(c for c in cells if c.method == "magnitude")
    assert f"cell {bad.key()} FAILED (mnist-sample lenet300 magnitude s=0.5 seed=0" in err
    assert "RuntimeError: simulated out of memory" in err
    assert "1 of 3 cells failed" in err
    assert "[3/3]" in out  # the cell after the failing one ran
    with ResultsStore(results) as store:
        assert store.keys() == {c.key() for c in cells if c.method != "magnitude"}  # not recorded as finished
        failures = store.failures()
        assert list(failures) == [bad.key()]
        assert failures[bad.key()]["error"] == "RuntimeError: simulated out of memory"
        assert failures[bad.key()]["settings"]["method"] == "magnitude"
        assert "simulated out of memory" in failures[bad.key()]["traceback"]

    assert main(["sweep", str(cfg), "--dry-run"]) == 0
    assert "1 to run" in capsys.readouterr().out
    monkeypatch.setattr(run_module, "run_experiment", real)
    assert main(["sweep", str(cfg), "--device", "cpu"]) == 0
    assert "2 done, 1 to run" in capsys.readouterr().out
    with ResultsStore(results) as store:
        assert store.keys() == {c.key() for c in cells} and store.failures() == {}


def test_a_failing_cell_in_a_parallel_sweep_is_recorded_and_the_others_run(tmp_path, capsys):
    # snip-it refuses `iterations` only when it prunes: a failure at run time, not in the config
    results = tmp_path / "res"
    cfg = write(tmp_path / "s.toml", results, recipe={**RECIPE, "iterations": 2},
                methods=("random", "snip-it", "magnitude"))
    assert run_sweep(cfg, jobs=2, device="cpu") == 1
    err = capsys.readouterr().err
    assert "iterations does not apply to 'snip-it'" in err and "1 of 3 cells failed" in err
    cells, _ = load_sweep(cfg)
    with ResultsStore(results) as store:
        assert store.keys() == {c.key() for c in cells if c.method != "snip-it"}
        assert [f["settings"]["method"] for f in store.failures().values()] == ["snip-it"]


def test_the_store_keeps_failures_apart_and_a_finished_run_clears_its_failure(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.add_failure("k", {"method": "snip"}, "ValueError: first")
        store.add_failure("k", {"method": "snip"}, "ValueError: second", "Traceback ...")
        assert store.keys() == set()
        assert store.failures()["k"]["error"] == "ValueError: second" and store.failures()["k"]["attempts"] == 2
        store.add({"key": "k", "method": "snip", "curve": []})
        assert store.keys() == {"k"} and store.failures() == {}


# --- 3. workers end when the sweep process is killed --------------------------------------------------------





@pytest.mark.skipif(not Path("/proc/self/task").exists() or not sys.platform.startswith("linux"),
                    reason="finds the worker processes through /proc")
def test_workers_end_when_the_parallel_sweep_is_killed_and_the_sweep_resumes(tmp_path):
    results = tmp_path / "res"
    cfg = write(tmp_path / "s.toml", results, methods=("random", "magnitude"), sparsities=(0.5, 0.7, 0.9))
    command = [sys.executable, "-m", "earlyprune.cli", "sweep", str(cfg), "--device", "cpu"]
    proc = subprocess.Popen(command + ["--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        children |= descendants(proc.pid)
        if store_count(results) >= 1:
            break
        time.sleep(0.05)
    children |= descendants(proc.pid)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(children) >= 2, "expected the two workers"
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.1)
    survivors = [pid for pid in children if alive(pid)]
    for pid in survivors:  # do not leave them behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "worker processes outlived the killed sweep"
    partial = store_count(results)
    assert 1 <= partial < 6, "the sweep should have been killed part-way"

    assert_sweep_resumes_with_every_cell_once(command, cfg, results, partial)


# --- 4. a missing dataset stops the sweep (dry run included) before anything runs ---------------------------

def test_a_missing_dataset_fails_the_dry_run_and_the_sweep_before_running(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    cfg = write(tmp_path / "s.toml", tmp_path / "res", datasets=("mnist-sample", "fashion-mnist"))
    for extra in (["--dry-run"], []):
        assert main(["sweep", str(cfg), "--data-dir", str(empty), *extra]) == 2
        out, err = capsys.readouterr()
        assert "to run" not in out
        assert "dataset 'fashion-mnist' not found. Looked in:" in err and str(empty) in err
    assert store_count(tmp_path / "res") == 0  # the mnist-sample cells did not run either


def test_datasets_that_are_present_pass_the_check(tmp_path, capsys):
    data = tmp_path / "data" / "MNIST" / "raw"
    data.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / (stem + ".gz")).write_bytes(b"")  # located, never read by the check
    cfg = write(tmp_path / "s.toml", tmp_path / "res", datasets=("mnist",))
    assert main(["sweep", str(cfg), "--data-dir", str(tmp_path / "data"), "--dry-run"]) == 0
    assert "2 to run" in capsys.readouterr().out
