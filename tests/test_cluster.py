"""earlyprune sweep --executor ray on a real two-node Ray cluster on 127.0.0.1: a worker process killed in
the middle of a cell is recorded as failed, the resumed sweep runs it, every cell is stored exactly once
and with the numbers the local executor gives for the same seeds. Also the executor's flags and errors.

The cluster (a head node and one more worker node, one CPU each) lives in this test's own temporary
directory and is stopped by the fixture, which then checks that none of its processes survived. The
Ray test takes about 50-75 s on a loaded 2-core machine (20 s of it starting the two nodes).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import alive, cmdline, descendants

from earlyprune.experiments.executors import CellJob, ExecutorError, Resources, load_resources, make_executor
from earlyprune.experiments.store import ResultsStore
from earlyprune.experiments.sweep import ConfigError, load_sweep, run_sweep

TOML = """results = "{results}"

[recipe]
epochs = 1
batch_size = 100
train_subset = 300
width = 0.25

[grid]
datasets = ["mnist-sample"]
models = ["lenet300"]
methods = ["random", "magnitude"]
sparsities = [0.5, 0.9]
seeds = [0]

[resources]
num_cpus = 1
"""

#: the numbers of a record that must not depend on where the cell ran
RESULT_FIELDS = ("final_accuracy", "best_accuracy", "final_metric", "achieved_sparsity", "nonzero_params",
                 "effective_flops", "training_flops")


def _sweep_file(tmp_path: Path, results: Path) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(TOML.format(results=results))
    return path


# --- no cluster needed ----------------------------------------------------------------------------------

def test_resources_come_from_the_toml_and_the_flags_override_them(tmp_path):
    cfg = _sweep_file(tmp_path, tmp_path / "res")
    assert load_resources(cfg) == Resources(num_cpus=1)
    assert load_resources(cfg, num_cpus=2, num_gpus=0.5) == Resources(num_cpus=2, num_gpus=0.5)
    assert Resources(num_cpus=2.5).threads(default=7) == 2 and Resources().threads(default=7) == 7
    cfg.write_text(TOML.format(results=tmp_path) + "num_gpu = 1\n")
    line = len(cfg.read_text().splitlines())
    with pytest.raises(ConfigError, match=rf"sweep\.toml:{line}: \[resources\] has unknown key 'num_gpu'"):
        load_resources(cfg)
    cfg.write_text(TOML.format(results=tmp_path).replace("num_cpus = 1", "num_cpus = 0"))
    with pytest.raises(ConfigError, match=r"sweep\.toml:\d+: \[resources\] num_cpus must be a number > 0"):
        load_resources(cfg)


def test_flags_that_belong_to_the_other_executor_are_refused():
    job = CellJob()
    with pytest.raises(ExecutorError, match="--address .* needs --executor ray"):
        make_executor("local", job, address="127.0.0.1:6379")
    with pytest.raises(ExecutorError, match="--jobs is the local executor's"):
        make_executor("ray", job, jobs=4)
    with pytest.raises(ExecutorError, match="unknown executor 'slurm'; valid: local, ray"):
        make_executor("slurm", job)


def test_without_ray_the_executor_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from earlyprune.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cfg = _sweep_file(tmp_path, tmp_path / "res")
    assert main(["sweep", str(cfg), "--executor", "ray", "--dry-run"]) == 2
    assert "pip install 'earlyprune[ray]'" in capsys.readouterr().err


# --- a real Ray cluster -----------------------------------------------------------------------------------








@pytest.fixture
def ray_cluster(monkeypatch):
    """A head node and a worker node on 127.0.0.1, one CPU each, under a temporary directory of its own
    (short: Ray's socket paths must be); always stopped, and no process of it may survive."""
    ray = pytest.importorskip("ray")
    if not sys.platform.startswith("linux"):
        pytest.skip("finds the Ray processes through /proc")
    from ray.cluster_utils import Cluster

    temp = Path(tempfile.mkdtemp(prefix="ep-ray-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throw-away cluster on the loopback interface
    # every address on 127.0.0.1: otherwise Ray's driver replaces 127.0.0.1 by the machine's own IP, where
    # a node listening on the loopback interface cannot be reached
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # for the nodes' processes
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)  # for this one
    # fail at once rather than have ray.init wait for ever on an address it rewrote
    assert ray._private.services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = None
    seen: set[int] = set()
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        seen |= descendants(os.getpid())
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        seen |= {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and str(temp) in cmdline(int(p.name))}
        deadline = time.time() + 15
        while time.time() < deadline and any(alive(pid) for pid in seen):
            time.sleep(0.1)
        survivors = {pid: cmdline(pid) for pid in seen if alive(pid)}
        for pid in survivors:  # never leave them behind, whatever the outcome
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
        assert not survivors, f"Ray processes outlived the cluster: {survivors}"


def _kill_first_cell_worker(killed: list[str], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker process seen running a cell (its title is ``ray::earlyprune-cell``)."""
    while not stop.is_set():
        for pid in descendants(os.getpid()):
            if cmdline(pid).startswith("ray::earlyprune-cell"):
                os.kill(pid, signal.SIGKILL)
                killed.append(str(pid))
                return
        time.sleep(0.02)


def test_a_sweep_on_a_two_node_ray_cluster_survives_a_killed_worker_and_matches_the_local_executor(
        tmp_path, ray_cluster, capsys):
    cells, _ = load_sweep(_sweep_file(tmp_path, tmp_path / "unused"))
    assert len(cells) == 4
    on_ray = _sweep_file(tmp_path, tmp_path / "ray")

    killed: list[str] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_cell_worker, args=(killed, stop), daemon=True)
    killer.start()
    try:
        first = run_sweep(on_ray, executor="ray", address=ray_cluster.address, device="cpu")
    finally:
        stop.set()
        killer.join()
    out, err = capsys.readouterr()
    assert killed, "no Ray worker was seen running a cell"
    assert first == 1 and "1 of 4 cells failed" in err
    assert "the Ray task running the cell was lost (" in err  # the worker's death, as Ray reports it
    with ResultsStore(tmp_path / "ray") as store:
        failed = list(store.failures())
        assert len(failed) == 1 and len(store.keys()) == 3 and failed[0] not in store.keys()

    assert run_sweep(on_ray, executor="ray", address=ray_cluster.address, device="cpu") == 0
    out = capsys.readouterr().out
    assert "4 cells, 3 done, 1 to run" in out and "(1 failed before and run again)" in out
    assert "[1/1]" in out and "1/1 done, 0 running, 0 failed" in out

    local = tmp_path / "local"
    assert run_sweep(on_ray, results_dir=str(local), device="cpu") == 0  # the same cells, 1 thread each
    capsys.readouterr()
    with ResultsStore(tmp_path / "ray") as store:
        assert store.integrity_ok() and store.failures() == {}
        on_cluster = {}
        for record in store.records():
            assert record["key"] not in on_cluster  # exactly once
            on_cluster[record["key"]] = record
        curves = {key: store.curve(key) for key in on_cluster}
    with ResultsStore(local) as store:
        here = {r["key"]: r for r in store.records()}
        local_curves = {key: store.curve(key) for key in here}
    assert sorted(on_cluster) == sorted(here) == sorted(c.key() for c in cells)
    for key, record in on_cluster.items():
        assert record["threads"] == here[key]["threads"] == 1
        assert {f: record[f] for f in RESULT_FIELDS} == {f: here[key][f] for f in RESULT_FIELDS}
        assert [(p["epoch"], p["test_accuracy"], p["train_loss"]) for p in curves[key]] == \
            [(p["epoch"], p["test_accuracy"], p["train_loss"]) for p in local_curves[key]]


# --- progress -----------------------------------------------------------------------------------------------

def test_progress_counts_done_running_failed_and_estimates_the_time_left(tmp_path):
    import io

    from earlyprune.experiments.sweep_progress import SweepProgress, format_duration

    cells, _ = load_sweep(_sweep_file(tmp_path, tmp_path / "res"))
    now = [100.0]
    out, err = io.StringIO(), io.StringIO()
    progress = SweepProgress(4, out=out, err=err, tty=False, clock=lambda: now[0])
    progress.cell_started(cells[0])
    progress.cell_started(cells[1])
    assert progress.status() == "0/4 done, 2 running, 0 failed, ETA -"
    now[0] = 130.0  # 30 s: one cell ended, three left -> 90 s
    progress.cell_finished(cells[0], "91.00%")
    assert out.getvalue().endswith("(30s) | 1/4 done, 1 running, 0 failed, ETA 1m30s\n")
    now[0] = 140.0  # 40 s, two ended, two left -> 40 s
    progress.cell_failed(cells[1], "a cell", "RuntimeError: boom")
    assert err.getvalue() == (f"[2/4] cell {cells[1].key()} FAILED (a cell): RuntimeError: boom | "
                              "1/4 done, 0 running, 1 failed, ETA 40s\n")
    assert "\r" not in out.getvalue()  # plain lines when not a terminal
    assert format_duration(7325) == "2h02m" and format_duration(59.4) == "59s"

    tty = io.StringIO()
    progress = SweepProgress(2, out=tty, err=tty, tty=True, clock=lambda: now[0])
    progress.cell_started(cells[0])
    progress.cell_finished(cells[0], "50.00%")
    progress.close()
    text = tty.getvalue()
    assert text.startswith("\r\033[K0/2 done, 1 running, 0 failed, ETA -")  # the status line, redrawn in place
    assert "\r\033[K[1/2] lenet300" in text and text.endswith("\r\033[K")  # cleared at the end


def test_the_local_pool_reports_a_killed_worker_as_a_failed_cell_and_runs_the_others(tmp_path):
    from earlyprune.experiments.executors import Finished, ProcessPoolExecutor, Started

    if not sys.platform.startswith("linux"):
        pytest.skip("finds the worker processes through /proc")
    cells, _ = load_sweep(_sweep_file(tmp_path, tmp_path / "res"))
    cells = cells[:3]
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for pid in descendants(os.getpid()):
                if "multiprocessing.spawn" in cmdline(pid):  # a worker: it holds a cell from its start
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    events = list(ProcessPoolExecutor(CellJob(threads=1, device="cpu"), jobs=2).run(iter(cells)))
    killer.join()
    assert killed
    started = [e.cell.key() for e in events if isinstance(e, Started)]
    finished = [e for e in events if isinstance(e, Finished)]
    assert sorted(started) == sorted(e.cell.key() for e in finished) == sorted(c.key() for c in cells)
    failed = [e for e in finished if not e.ok]
    assert len(failed) == 1 and "the worker process died while running the cell" in failed[0].error
    assert all(e.record["key"] == e.cell.key() for e in finished if e.ok)
