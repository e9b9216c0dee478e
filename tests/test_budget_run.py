"""``earlyprune run --budget`` / sweep ``budgets``: a structured run pruned to a cost instead of a channel
fraction, its record (the budget and what was reached), its key, and clear errors for bad budgets."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune.cli import _config_from, build_parser, main
from earlyprune.errors import PruningError
from earlyprune.experiments.config import RunConfig
from earlyprune.experiments.records import read_records
from earlyprune.experiments.report import summarise
from earlyprune.experiments.sweep import ConfigError, load_sweep
from earlyprune.metrics import report

RUN = ["run", "--dataset", "mnist-sample", "--model", "lenet5", "--width", "0.5", "--method", "crop",
       "--train-subset", "300", "--batch-size", "50", "--epochs", "1"]


def config_of(*flags: str) -> RunConfig:
    return _config_from(build_parser().parse_args(["run", *flags]))


def test_the_flag_is_parsed_to_one_spelling_and_enters_the_key():
    config = config_of("--method", "crop", "--structured", "--budget", "FLOPS=.250")
    assert config.budget == "flops=0.25" and config.pruning.channel_budget(100) == {"flops": 0.25}
    assert config_of("--method", "crop", "--structured", "--budget", "memory_mb=200").pruning.channel_budget(64) \
        == {"memory_mb": 200.0, "batch_size": 64}  # a memory budget is at the run's batch size
    plain = config_of("--method", "crop", "--structured")
    assert plain.budget is None and "budget" not in plain.key_settings()  # older runs keep their keys
    keys = {config_of("--method", "crop", "--structured", "--budget", b).key()
            for b in ("flops=0.25", "flops=0.5", "params=0.25", "flops=0.250")}
    assert len(keys) == 3 and plain.key() not in keys  # flops=0.250 is flops=0.25: one run


@pytest.mark.parametrize("flags, message", [
    (["--budget", "flops=0.25"], "structured pruning only"),
    (["--structured", "--budget", "flop=0.25"], "KIND one of flops"),
    (["--structured", "--budget", "flops"], "KIND=NUMBER"),
    (["--structured", "--budget", "flops=1.5"], r"in \(0, 1\]"),
    (["--structured", "--budget", "channels=0"], "> 0"),
    (["--structured", "--budget", "memory_mb=-1"], "> 0"),
    (["--structured", "--budget", "flops=0.2,params=0.3"], "one KIND=NUMBER"),
    (["--structured", "--budget", "flops=0.25", "--sparsity", "0.9"], "--sparsity both"),
    (["--structured", "--budget", "flops=0.25", "--sparsity", "0.5"], "not both"),
])
def test_bad_budgets_are_one_clear_line(tmp_path, capsys, flags, message):
    code = main(["run", "--dataset", "mnist-sample", "--method", "crop", *flags, "--out", str(tmp_path / "r.jsonl")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("earlyprune run: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "r.jsonl").exists()


def test_a_budget_does_not_apply_to_dense_or_activation_density():
    for method in ("dense", "activation_density"):
        with pytest.raises(PruningError, match="budget applies to the pruning criteria"):
            RunConfig(method=method, structured=True, budget="flops=0.5")


def test_a_run_at_init_reaches_its_flops_budget_and_records_it(tmp_path):
    out = tmp_path / "runs.jsonl"
    assert main([*RUN, "--structured", "--budget", "flops=0.25", "--out", str(out)]) == 0
    (record,) = read_records(out)
    assert record["budget"] == "flops=0.25" and record["structured"]
    reached = record["budget_reached"]
    assert reached["kind"] == "flops" and reached["target"] == 0.25
    # counted twice: by the budget on the pruned model, and by the run's own report of the trained model
    assert reached["flops_ratio_of_dense"] <= 0.25
    assert record["flops"] == reached["flops"] and record["flops"] / record["dense_flops"] <= 0.25
    assert record["flops"] / record["dense_flops"] > 0.15  # the budget is used, not undershot by far
    assert record["key"] == RunConfig.from_dict({k: record[k] for k in config_of().as_dict()}).key()


def test_an_early_run_prunes_to_a_params_budget(tmp_path):
    out = tmp_path / "runs.jsonl"
    assert main([*RUN, "--structured", "--when", "epoch:1", "--budget", "params=0.3", "--out", str(out)]) == 0
    (record,) = read_records(out)
    (event,) = record["prune_events"]
    assert event["epoch"] == 1 and event["params_after"] == record["params"]
    assert record["params"] <= 0.3 * record["dense_params"] and record["budget_reached"]["params"] == record["params"]
    # the event's sparsity is the fraction of channels the budget removed
    reached = record["budget_reached"]
    assert event["sparsity"] == pytest.approx(1 - reached["channels_kept"] / reached["channels_before"])
    assert 0 < event["sparsity"] < 1


def test_early_pruner_takes_a_budget_and_refuses_an_ambiguous_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    batch = (torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)))
    dense = report(model, input_shape=(3, 8, 8)).flops
    pruner = ep.EarlyPruner(model, "crop", data=[batch], structured=True, budget={"flops": 0.4}, at_epoch=1)
    assert pruner.step() is not None
    assert report(model, input_shape=(3, 8, 8)).flops <= 0.4 * dense
    assert pruner.result.info["budget"]["flops"] == report(model, input_shape=(3, 8, 8)).flops
    with pytest.raises(PruningError, match="structured pruning only"):
        ep.EarlyPruner(model, "crop", data=[batch], budget={"flops": 0.4})
    with pytest.raises(PruningError, match="not both"):
        ep.EarlyPruner(model, "crop", 0.5, [batch], structured=True, budget={"flops": 0.4})
    with pytest.raises(PruningError, match="one shot"):
        ep.EarlyPruner(model, "crop", data=[batch], structured=True, budget={"flops": 0.4}, schedule="exponential")
    with pytest.raises(PruningError, match="fraction"):
        ep.EarlyPruner(model, "crop", data=[batch], structured=True, budget={"flops": 2})


def write_sweep(path, grid: str) -> None:
    path.write_text(f'[recipe]\nepochs = 1\n[grid]\ndatasets = ["mnist-sample"]\nmodels = ["lenet5"]\n{grid}\n')


def test_budgets_are_a_sweep_axis(tmp_path):
    cfg = tmp_path / "s.toml"
    write_sweep(cfg, 'methods = ["dense", "crop"]\nstructured = [true]\nbudgets = ["flops=0.25", "FLOPS=0.5"]')
    cells, _ = load_sweep(cfg)
    assert sorted((c.method, c.budget) for c in cells) == [("crop", "flops=0.25"), ("crop", "flops=0.5"),
                                                           ("dense", None)]
    assert len({c.key() for c in cells}) == 3
    write_sweep(cfg, 'methods = ["crop"]\nbudgets = ["flops=0.25"]')
    with pytest.raises(ConfigError, match="structured pruning only"):
        load_sweep(cfg)
    write_sweep(cfg, 'methods = ["crop"]\nstructured = [true]\nbudgets = ["flops=2"]')
    with pytest.raises(ConfigError, match=r"budgets.*in \(0, 1\]"):
        load_sweep(cfg)


def test_the_report_tells_budgets_apart_and_gives_them_no_target_sparsity():
    base = {"dataset": "mnist", "model": "lenet5", "method": "crop", "structured": True, "sparsity": 0.9,
            "nonzero_params": 10, "final_accuracy": 0.5, "final_metric": 0.5, "metric_name": "accuracy"}
    rows = summarise([{**base, "budget": "flops=0.25"}, {**base, "budget": "flops=0.5", "final_accuracy": 0.9,
                                                          "final_metric": 0.9}, base])[("mnist", "lenet5")]
    assert set(rows) == {"crop (structured)", "crop (structured) [budget flops=0.25]",
                         "crop (structured) [budget flops=0.5]"}
    assert list(rows["crop (structured) [budget flops=0.5]"]) == [None]
    assert list(rows["crop (structured)"]) == [0.9]
