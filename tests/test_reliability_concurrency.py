"""Two and three sweeps running at once over one results store: every cell computed exactly once (each
claims a cell in the store before it runs it), every cell stored, no claim left behind."""

from __future__ import annotations

import pytest
from test_reliability_kill import computed, start, sweep_config

from earlyprune.experiments.store import ResultsStore
from earlyprune.experiments.sweep import load_sweep


@pytest.mark.parametrize("sweeps", [2, 3])
def test_concurrent_sweeps_on_one_store_compute_every_cell_once(tmp_path, sweeps):
    config = sweep_config(tmp_path, methods=("random", "magnitude"), seeds=(0, 1))
    cells, results = load_sweep(config)
    procs = [start(["sweep", str(config), "--device", "cpu"]) for _ in range(sweeps)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    assert sum(computed(out) for out, _ in outputs) == len(cells)  # each cell computed by one sweep only
    with ResultsStore(results) as store:
        assert sorted(store.keys()) == sorted(c.key() for c in cells) and store.claims() == {}
