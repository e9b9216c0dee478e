"""SIGKILL at random moments of ``earlyprune run``, ``sweep`` and ``report`` (three each, on the embedded
sample with a tiny model and one epoch), then resumed: no record lost or duplicated, no torn JSON-lines or
CSV line. Two and three sweeps running at once over one store: every cell computed exactly once."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from earlyprune.cli import main
from earlyprune.experiments.records import read_records
from earlyprune.experiments.store import ResultsStore
from earlyprune.experiments.sweep import load_sweep

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL and /proc")

CLI = [sys.executable, "-m", "earlyprune.cli"]
TINY = ["--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--train-subset", "200",
        "--epochs", "1", "--device", "cpu", "--method", "random", "--sparsity", "0.5", "--threads", "1"]
# the kill moments (seconds after the start), drawn once (seeded) over the life of each kind of process:
# start-up (about 2-3 s: importing torch), loading data, training, writing
_DRAW = random.Random(16)
RUN_MOMENTS = [round(_DRAW.uniform(1.0, 7.0), 2) for _ in range(3)]
SWEEP_MOMENTS = [round(_DRAW.uniform(2.5, 9.0), 2) for _ in range(3)]
REPORT_MOMENTS = [round(_DRAW.uniform(1.0, 5.0), 2) for _ in range(3)]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_at(procs: list[subprocess.Popen], moments: list[float]) -> None:
    """SIGKILL each process at its moment (seconds after now), unless it has ended by then."""
    begun = time.monotonic()
    for proc, moment in sorted(zip(procs, moments), key=lambda pm: pm[1]):
        time.sleep(max(0.0, begun + moment - time.monotonic()))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.communicate(timeout=120)


def assert_whole_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file is one whole JSON record."""
    if not path.exists():
        return []
    text = path.read_text()
    assert not text or text.endswith("\n"), "torn last line"
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_run_killed_three_times_then_resumed_loses_and_duplicates_nothing(tmp_path, capsys):
    out, store_dir = tmp_path / "runs.jsonl", tmp_path / "store"
    runs = [[*TINY, "--seed", str(seed), "--out", str(out), "--store", str(store_dir), "--skip-existing"]
            for seed in range(3)]
    kill_at([start(args) for args in runs], RUN_MOMENTS)  # three at once, each killed at its moment
    assert_whole_lines(out)
    for args in runs:  # resumed: a run killed between --out and the store is completed, never run twice
        assert main(["run", *args]) == 0
    records = assert_whole_lines(out)
    with ResultsStore(store_dir) as store:
        stored = sorted(store.keys())
        assert store.integrity_ok()
    assert len(records) == 3 and sorted(r["key"] for r in records) == stored and len(set(stored)) == 3
    assert sorted(r["seed"] for r in records) == [0, 1, 2]


def sweep_config(tmp_path: Path, methods=("random", "magnitude"), seeds=(0, 1)) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text('results = "res"\n[recipe]\nepochs = 1\ntrain_subset = 200\nwidth = 0.25\n'
                    f'[grid]\ndatasets = ["mnist-sample"]\nmodels = ["lenet300"]\nmethods = {json.dumps(list(methods))}\n'
                    f'sparsities = [0.5]\nseeds = {json.dumps(list(seeds))}\n')
    return path


def computed(stdout: str) -> int:
    """Cells a sweep computed, from its progress lines (one per finished cell)."""
    return len(re.findall(r"^\[\d+/\d+\] ", stdout, flags=re.M))


def test_sweeps_killed_three_times_on_one_store_then_resumed_hold_every_cell_once(tmp_path, capsys):
    config = sweep_config(tmp_path)
    cells, results = load_sweep(config)
    kill_at([start(["sweep", str(config), "--device", "cpu"]) for _ in range(3)], SWEEP_MOMENTS)
    # the killed sweeps' claims belong to dead processes: the resumed sweep takes them over
    assert main(["sweep", str(config), "--device", "cpu"]) == 0
    with ResultsStore(results) as store:
        assert store.integrity_ok() and store.claims() == {}
        keys = [r["key"] for r in store.records()]
        assert all(len(store.curve(k)) == 1 for k in keys)
    assert sorted(keys) == sorted(c.key() for c in cells)


def test_report_killed_three_times_never_tears_or_drops_a_record(tmp_path, capsys):
    config = sweep_config(tmp_path, methods=("random",), seeds=(0,))
    _, results = load_sweep(config)
    assert main(["sweep", str(config), "--device", "cpu"]) == 0
    with ResultsStore(results) as store:
        stored = sorted(store.keys())
    foreign = [{"key": f"from-run-{i}", "method": "snip", "note": "x" * 2000} for i in range(50)]
    exports = Path(results) / "results.jsonl"
    exports.write_text("".join(json.dumps(r) + "\n" for r in foreign))
    procs = []
    for moment in REPORT_MOMENTS:  # one after the other on the same folder: each killed at its moment
        procs.append(start(["report", str(results)]))
        kill_at(procs[-1:], [moment])
        keys = [r["key"] for r in assert_whole_lines(exports)]
        assert {r["key"] for r in foreign} <= set(keys) and len(keys) == len(set(keys))
        if (Path(results) / "results.csv").exists():
            list(csv.DictReader((Path(results) / "results.csv").open()))  # parses: never torn
    assert main(["report", str(results)]) == 0
    keys = [r["key"] for r in read_records(exports)]
    assert sorted(keys) == sorted([r["key"] for r in foreign] + stored)
    rows = list(csv.DictReader((Path(results) / "results.csv").open()))
    assert sorted(r["key"] for r in rows) == sorted(keys)
