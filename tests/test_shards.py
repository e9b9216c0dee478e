"""earlyprune sweep --shard K/N and the merged report: shards disjoint and covering the grid, stable when
the TOML is reordered, and the report of the shard stores the same as that of one local sweep."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from earlyprune.cli import main
from earlyprune.experiments.merge import find_stores, merge_records, read_stores
from earlyprune.experiments.report import markdown_tables, summarise
from earlyprune.experiments.shards import Shard, ShardError, parse_shard, shard_of
from earlyprune.experiments.store import ResultsStore
from earlyprune.experiments.sweep import load_sweep, run_sweep

RECIPE = 'epochs = 1\nbatch_size = 100\ntrain_subset = 300\nwidth = 0.25\n'


def write(path: Path, results: Path, grid: dict[str, list], recipe: str = RECIPE) -> Path:
    path.write_text(f'results = "{results}"\n\n[recipe]\n{recipe}\n[grid]\n'
                    + "".join(f"{axis} = {json.dumps(values)}\n" for axis, values in grid.items()))
    return path


BIG = {"datasets": ["mnist-sample"], "models": ["lenet300", "lenet5"],
       "methods": ["dense", "random", "magnitude", "snip"], "sparsities": [0.5, 0.9, 0.99], "seeds": [0, 1, 2]}


def test_shards_are_disjoint_and_cover_the_grid(tmp_path):
    cells, _ = load_sweep(write(tmp_path / "s.toml", tmp_path / "r", BIG))
    keys = [c.key() for c in cells]
    assert len(keys) == len(set(keys)) == 2 * (1 + 3 * 3) * 3  # dense once per model x seed
    for count in (1, 2, 5, 16):
        shards = [{c.key() for c in Shard(k, count).select(cells)} for k in range(count)]
        assert set().union(*shards) == set(keys)
        assert sum(map(len, shards)) == len(keys)  # no cell in two shards
        assert all(a.isdisjoint(b) for a, b in itertools.combinations(shards, 2))
        # the shard is the key's hash modulo N, computed here another way (hex digits, not bytes)
        for key in keys:
            expected = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % count
            assert shard_of(key, count) == expected and key in shards[expected]
    assert all(len(s) > 0 for s in [Shard(k, 5).select(cells) for k in range(5)])  # 60 cells: none empty


def test_a_reordered_toml_keeps_each_cell_in_its_shard(tmp_path):
    cells, _ = load_sweep(write(tmp_path / "a.toml", tmp_path / "r", BIG))
    reordered = {axis: list(reversed(values)) for axis, values in reversed(list(BIG.items()))}
    reordered["seeds"].append(3)  # and a cell more
    recipe = "\n".join(reversed(RECIPE.strip().splitlines())) + "\n"
    other, _ = load_sweep(write(tmp_path / "b.toml", tmp_path / "r", reordered, recipe=recipe))
    assert [c.key() for c in other] != [c.key() for c in cells]  # another order
    common = {c.key() for c in cells} & {c.key() for c in other}
    assert common == {c.key() for c in cells}
    for count in (3, 8):
        for k in range(count):
            first = {c.key() for c in Shard(k, count).select(cells)}
            again = {c.key() for c in Shard(k, count).select(other)}
            assert first == again & common


@pytest.mark.parametrize("text", ["3", "3/3", "-1/4", "1/0", "a/b", "1/2/3", ""])
def test_a_bad_shard_is_one_clear_error(text):
    with pytest.raises(ShardError, match="K/N|0 <= K < N"):
        parse_shard(text)
    assert parse_shard(" 2 / 5 ") == Shard(2, 5) and parse_shard("0/1").name == "shard-0-of-1"


def _without_seconds(records):
    return [{**r, "train_seconds": 0.0, "scoring_seconds": 0.0} for r in records]


def test_the_merged_report_of_the_shards_is_the_report_of_one_sweep(tmp_path, capsys):
    grid = {"datasets": ["mnist-sample"], "models": ["lenet300"], "methods": ["dense", "random", "magnitude"],
            "sparsities": [0.3, 0.9], "seeds": [0]}
    cfg = write(tmp_path / "s.toml", tmp_path / "sharded", grid)
    cells, _ = load_sweep(cfg)
    assert len(cells) == 5 and sorted(len(Shard(k, 2).select(cells)) for k in range(2)) == [2, 3]
    assert run_sweep(cfg, results_dir=str(tmp_path / "single"), device="cpu", num_cpus=1) == 0
    for k in range(2):
        assert main(["sweep", str(cfg), "--shard", f"{k}/2", "--device", "cpu", "--num-cpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "shard 0/2: " in out and "shard 1/2: " in out
    assert find_stores(tmp_path / "sharded") == [tmp_path / "sharded" / "shard-0-of-2",
                                                 tmp_path / "sharded" / "shard-1-of-2"]
    for k in range(2):  # each shard's store holds its cells only
        with ResultsStore(tmp_path / "sharded" / f"shard-{k}-of-2") as store:
            assert store.keys() == {c.key() for c in Shard(k, 2).select(cells)}

    with ResultsStore(tmp_path / "single") as store:
        single = list(store.records())
    merged = read_stores(tmp_path / "sharded")
    assert sorted(r["key"] for r in merged.records) == sorted(r["key"] for r in single)
    # the same tables, row for row (rows follow the order in which the runs were stored: shard by shard)
    assert sorted(markdown_tables(summarise(_without_seconds(merged.records))).splitlines()) == \
        sorted(markdown_tables(summarise(_without_seconds(single))).splitlines())

    assert main(["report", str(tmp_path / "single")]) == 0
    assert main(["report", str(tmp_path / "sharded")]) == 0
    capsys.readouterr()
    one = (tmp_path / "single" / "report.md").read_text()
    both = (tmp_path / "sharded" / "report.md").read_text()
    assert "Merged from 2 stores (0 duplicate run(s) counted once)" in both

    def accuracy_table(text):
        start = text.index("Test accuracy")
        return sorted(text[start:text.index("\n\n", start)].splitlines())

    assert accuracy_table(one) == accuracy_table(both)
    # a store given twice, and the single sweep beside the shards: every run once, without a warning
    assert main(["report", str(tmp_path / "sharded"), str(tmp_path / "single"), str(tmp_path / "single"),
                 "--out", str(tmp_path / "all")]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "Merged from 3 stores (5 duplicate run(s) counted once)" in (tmp_path / "all" / "report.md").read_text()
    assert main(["report", str(tmp_path / "sharded"), str(tmp_path / "single")]) == 2
    assert "--out DIR" in capsys.readouterr().err


def test_conflicting_copies_keep_the_first_finished_whatever_the_order_and_warn(tmp_path, capsys):
    base = {"key": "k1", "dataset": "mnist-sample", "model": "lenet300", "method": "snip", "sparsity": 0.9,
            "seed": 0, "final_accuracy": 0.91, "curve": [{"epoch": 1, "test_accuracy": 0.91, "seconds": 1.0}]}
    early = {**base, "finished_at": "2026-01-01T10:00:00"}
    late = {**base, "finished_at": "2026-01-02T10:00:00", "final_accuracy": 0.5}
    same = {**early, "finished_at": "2026-01-03T10:00:00", "train_seconds": 9.0, "energy_joules": 12.5,
            "energy_source": "RAPL", "cpu_allocator": "system default (EARLYPRUNE_MALLOC=system)",
            "curve": [{"epoch": 1, "test_accuracy": 0.91, "seconds": 7.0}]}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for where, record in ((a, early), (b, late), (c, same)):
        with ResultsStore(where) as store:
            store.add(record)
    for order in ([a, b], [b, a]):
        merged = read_stores(order)
        assert [r["final_accuracy"] for r in merged.records] == [0.91]
        assert merged.conflicts == [("k1", sorted([a, b]))]
        assert "run k1 has different results in" in capsys.readouterr().err
    agreeing = merge_records([(a, early), (c, same)])  # only the circumstances differ: no conflict
    assert agreeing.conflicts == [] and agreeing.duplicates == 1 and agreeing.records == [early]


def test_report_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results store in" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
