"""RunConfig: settings declared once (flags, sweep checks and construction checks made from the
declarations), run keys that stay those of stored runs, and criterion options from the CLI and sweeps."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from earlyprune.cli import build_parser, main
from earlyprune.errors import PruningError
from earlyprune.experiments import config as config_module
from earlyprune.experiments.config import (
    LEGACY_KEY_SETTINGS, PruningConfig, RunConfig, check_setting, parse_option, setting,
)
from earlyprune.experiments.records import read_records
from earlyprune.experiments.sweep import ConfigError, load_sweep
from earlyprune.train import TrainConfig

# --- the run key of the flat RunConfig of 23 fields, re-implemented here from its definition -------------

#: the fields and defaults of RunConfig before it was declared in parts
OLD_DEFAULTS = dict(
    dataset="mnist", model="lenet5", method="snip", sparsity=0.9, epochs=20, batch_size=100, lr=0.1,
    optimizer="sgd", momentum=0.9, weight_decay=5e-4, lr_schedule="step", seed=0, scope="global",
    iterations=None, rule="topk", when="init", structured=False, prune_every=1, width=1.0, init=None,
    augment=True, score_batches=1, train_subset=None,
)


def old_key(**settings) -> str:
    """key() as it was: sha256 of json.dumps(asdict(config), sort_keys=True, default=str), 16 hex digits."""
    blob = json.dumps({**OLD_DEFAULTS, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


OLD_CONFIGS = [
    {},
    dict(model="lenet300", method="grasp", sparsity=0.98, epochs=1, lr=1, iterations=3, init="kaiming",
         train_subset=500, structured=True, when="epoch:2"),
    dict(method="dense", sparsity=0.0, augment=False, width=0.5, seed=3),
    dict(dataset="cifar10", model="resnet20", optimizer="adam", lr_schedule="cosine", momentum=0.0,
         weight_decay=0.0, scope="layer", rule="official", score_batches=4, batch_size=128, prune_every=2),
]


def test_the_legacy_settings_are_the_old_fields():
    assert set(LEGACY_KEY_SETTINGS) == set(OLD_DEFAULTS)
    assert {name: RunConfig().as_dict()[name] for name in OLD_DEFAULTS} == OLD_DEFAULTS


@pytest.mark.parametrize("settings", OLD_CONFIGS)
def test_a_run_stored_before_keeps_its_key(settings):
    assert RunConfig(**settings).key() == old_key(**settings)


def test_keys_computed_by_the_old_code_are_unchanged():
    # printed by the flat RunConfig (commit 12b63e3) for OLD_CONFIGS[0:3]
    assert [RunConfig(**s).key() for s in OLD_CONFIGS[:3]] == ["9e5b62cc2f2747f7", "9de15ce7ba622cd3",
                                                               "dcf7f6b3c3347261"]


def test_cli_and_sweep_configs_keep_their_old_keys(tmp_path):
    args = build_parser().parse_args(["run", "--method", "grasp", "--lr", "1", "--epochs", "3", "--width", "1"])
    from earlyprune.cli import _config_from

    # argparse gives floats for the real settings, as before: the key hashes 1.0, not 1
    assert _config_from(args).key() == old_key(method="grasp", lr=1.0, epochs=3, width=1.0) != old_key(
        method="grasp", lr=1, epochs=3, width=1.0)
    cfg = tmp_path / "s.toml"
    cfg.write_text('results = "r"\n[recipe]\nepochs = 1\nwidth = 1\n[grid]\ndatasets = ["mnist-sample"]\n'
                   'models = ["lenet300"]\nmethods = ["dense", "snip"]\nsparsities = [0.5]\nseeds = [2]\n')
    cells, _ = load_sweep(cfg)
    # TOML integers stay integers, as before; a sweep cell's thread count (1 unless the file says otherwise)
    # is hashed like any setting off its default (docs/reliability.md)
    assert {c.key() for c in cells} == {
        old_key(dataset="mnist-sample", model="lenet300", method="dense", sparsity=0.0, seed=2, epochs=1, width=1,
                threads=1),
        old_key(dataset="mnist-sample", model="lenet300", method="snip", sparsity=0.5, seed=2, epochs=1, width=1,
                threads=1),
    }


def test_a_new_setting_at_its_default_leaves_the_key_alone():
    hashed = RunConfig().key_settings()
    assert set(hashed) == set(OLD_DEFAULTS)  # nesterov, milestones, gamma, options: at their defaults
    assert RunConfig(nesterov=False).key() == RunConfig().key() == old_key()
    assert RunConfig(milestones=[0.5, 0.75]).key() == old_key()  # a TOML list equal to the default tuple
    assert RunConfig(nesterov=True).key_settings()["nesterov"] is True
    keys = {RunConfig().key(), RunConfig(nesterov=True).key(), RunConfig(gamma=0.2).key(),
            RunConfig(milestones=[0.3, 0.6]).key()}
    assert len(keys) == 4


@dataclass
class _PruningWithWarmup(PruningConfig):
    warmup: int = setting(0, "epochs of dense training before pruning (a setting declared by the test)", min=0)


@pytest.fixture
def warmup_declared(monkeypatch):
    """A setting declared after runs were stored: in PruningConfig, with a default."""
    monkeypatch.setitem(config_module.PARTS, "pruning", _PruningWithWarmup)
    return _PruningWithWarmup


@pytest.mark.parametrize("settings", OLD_CONFIGS)
def test_declaring_another_setting_keeps_stored_keys(warmup_declared, settings):
    config = RunConfig(**settings)
    assert isinstance(config.pruning, warmup_declared) and config.pruning.warmup == 0
    assert config.key() == old_key(**settings)
    assert RunConfig(**settings, warmup=2).key() != old_key(**settings)


def test_a_declared_setting_is_a_flag_with_its_help_and_a_checked_sweep_value(warmup_declared, tmp_path, capsys):
    run = _run_parser()
    action = next(a for a in run._actions if "--warmup" in a.option_strings)
    assert action.dest == "warmup" and action.default == 0
    assert "epochs of dense training before pruning" in _help_of(run, action) and "(default: 0)" in _help_of(
        run, action)
    assert main(["run", "--warmup", "-1", "--epochs", "0", "--out", str(tmp_path / "r.jsonl")]) == 2
    cli = capsys.readouterr().err.strip()
    cfg = _sweep(tmp_path, "warmup = -1\n")
    with pytest.raises(ConfigError) as error:
        load_sweep(cfg)
    assert cli == "earlyprune run: error: warmup must be an integer >= 0, got -1"
    assert str(error.value) == f"{cfg}:4: [recipe] warmup must be an integer >= 0, got -1"
    assert RunConfig(warmup=3).pruning.warmup == 3


# --- flags, sweep values and construction: one check -------------------------------------------------------

def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def _help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action)


def _sweep(tmp_path: Path, recipe: str = "", grid: str = "", options: str = "", methods=("snip",)) -> Path:
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'results = "{tmp_path / "res"}"\n\n[recipe]\n{recipe}\n[grid]\ndatasets = ["mnist-sample"]\n'
                   f'models = ["lenet300"]\nmethods = {json.dumps(list(methods))}\n{grid}'
                   + (f"\n[options]\n{options}" if options else ""))
    return cfg


def test_every_declared_setting_is_a_run_flag_with_help_and_default():
    run = _run_parser()
    flags = {s: a for a in run._actions for s in a.option_strings}
    names = [d for d in RunConfig.settings() if d.kind is not dict]
    # the old settings, nesterov, milestones, gamma, threads, steps_per_epoch; preset, ablation, score_mode;
    # compile, compile_mode, amp; budget; on_collapse
    assert len(names) == 23 + 5 + 3 + 3 + 1 + 1
    for declaration in names:
        action = flags["--" + declaration.name.replace("_", "-")]
        assert action.dest == declaration.name and action.default == declaration.default
        text = _help_of(run, action)
        assert text.startswith(declaration.help) and "(default: " in text, text
    assert "--option" in flags and "--no-augment" in flags and "--structured" in flags
    for action in run._actions:  # and the other flags say their default too, where they have one
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings != ["-h", "--help"]:
            assert "default" in _help_of(run, action), action.option_strings


def test_run_help_lists_choices_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--optimizer OPTIMIZER optimizer; one of: sgd, adam, adamw (default: sgd)" in out
    assert "one of: dense, random, magnitude, snip" in out and "(default: snip)" in out
    assert "--milestones X [X ...]" in out and "(default: 0.5 0.75)" in out
    assert "(default: the method's own: one shot; SynFlow 100)" in out


@pytest.mark.parametrize("flag, toml, message", [
    (["--lr", "0"], "lr = 0.0", "lr must be a number > 0, got 0.0"),
    (["--lr", "fast"], 'lr = "fast"', "lr must be a number > 0, got 'fast'"),
    (["--batch-size", "0"], "batch_size = 0", "batch_size must be an integer >= 1, got 0"),
    (["--optimizer", "rmsprop"], 'optimizer = "rmsprop"', "unknown optimizer 'rmsprop'; valid: sgd, adam, adamw"),
    (["--when", "later"], 'when = "later"', "when must be 'init', 'early' or 'epoch:N' (N >= 1), got 'later'"),
    (["--sparsity", "1.5"], "sparsity = 1.5", "sparsity must be in [0, 1)"),
    (["--gamma", "0"], "gamma = 0.0", "gamma must be a number > 0, got 0.0"),
    (["--milestones", "0.5", "-1"], "milestones = [0.5, -1.0]", "milestones must be a list of numbers > 0"),
])
def test_a_bad_value_gets_the_same_message_from_a_flag_and_a_sweep_file(tmp_path, capsys, flag, toml, message):
    assert main(["run", *flag, "--epochs", "0", "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("earlyprune run: error: ") and len(err.splitlines()) == 1
    cli = err.removeprefix("earlyprune run: error: ")
    cfg = _sweep(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as error:
        load_sweep(cfg)
    assert str(error.value) == f"{cfg}:4: [recipe] {cli}"
    assert message in cli
    with pytest.raises(PruningError) as built:  # and building a config checks the same
        RunConfig.from_dict({"epochs": 0, **{k: v for k, v in _toml_value(toml).items()}})
    assert str(built.value) == cli
    assert not (tmp_path / "r.jsonl").exists()


def _toml_value(line: str) -> dict:
    import tomllib

    return tomllib.loads(line)


def test_training_settings_are_the_train_config_itself():
    config = RunConfig(epochs=3, lr=0.05, nesterov=True)
    assert type(config.training) is TrainConfig
    assert config.training == TrainConfig(epochs=3, lr=0.05, nesterov=True)
    assert RunConfig(training=TrainConfig(epochs=3, lr=0.05, nesterov=True)) == config
    assert config.epochs == 3 and config.training.epochs == 3  # flat names read the parts
    with pytest.raises(AttributeError):
        config.epochs = 4
    with pytest.raises(PruningError, match="lr must be a number > 0, got 0"):
        TrainConfig(lr=0)
    with pytest.raises(PruningError, match="unknown lr_schedule 'linear'"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(TypeError, match="given both"):
        RunConfig(training=TrainConfig(), epochs=2)


def test_progress_is_no_setting_and_not_in_the_key():
    config = RunConfig(training=TrainConfig(progress=True))
    assert config.key() == RunConfig().key()
    assert "progress" not in config.as_dict()
    with pytest.raises(PruningError, match="unknown setting"):
        RunConfig.from_dict({"progress": True})
    assert "--progress" not in {s for a in _run_parser()._actions for s in a.option_strings}


def test_records_are_flat_and_rebuild_the_config():
    config = RunConfig(model="lenet-300-100", method="grasp", epochs=2, options={"temperature": 50.0})
    flat = config.as_dict()
    assert set(flat) == set(OLD_DEFAULTS) | {"nesterov", "milestones", "gamma", "threads", "steps_per_epoch",
                                             "preset", "ablation", "score_mode", "compile", "compile_mode", "amp",
                                             "budget", "on_collapse", "options"}
    assert flat["model"] == "lenet300" and flat["options"] == {"temperature": 50.0}
    again = RunConfig.from_dict(json.loads(json.dumps(flat)))  # as a record stores it
    assert again == config and again.key() == config.key()
    assert config.replace(epochs=5).training.epochs == 5 and config.training.epochs == 2


def test_registry_names_are_checked_by_sweeps_and_left_to_the_run_otherwise():
    assert RunConfig(model="lenet7").model == "lenet7"  # refused by the model registry when the run starts
    with pytest.raises(PruningError, match="unknown model 'lenet7'; valid: lenet300"):
        check_setting("model", "lenet7")
    assert check_setting("dataset", "MNIST-sample") == "mnist-sample"
    with pytest.raises(PruningError, match="unknown setting 'epochz'"):
        check_setting("epochz", 1)


# --- criterion options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("temperature=100", ("temperature", 100)), ("inner_lr=0.5", ("inner_lr", 0.5)),
    ("double=true", ("double", True)), ("double = false", ("double", False)), ("x=null", ("x", None)),
    ("name=abc", ("name", "abc")), ('name="a b"', ("name", "a b")), ("shape=[1, 28, 28]", ("shape", [1, 28, 28])),
])
def test_option_values_are_json_literals_or_text(text, expected):
    assert parse_option(text) == expected


@pytest.mark.parametrize("text", ["temperature", "=3", "two words=1"])
def test_an_option_without_a_name_is_refused(text):
    with pytest.raises(PruningError, match="NAME=VALUE"):
        parse_option(text)


def test_options_are_checked_against_the_method():
    assert RunConfig(method="grasp", options={"temperature": 100}).options == {"temperature": 100}
    with pytest.raises(PruningError, match=r"unknown option 'temp' for method 'grasp'; valid options: temperature"):
        RunConfig(method="grasp", options={"temp": 1})
    with pytest.raises(PruningError, match=r"method 'snip' takes no options, got 'temperature'"):
        RunConfig(method="snip", options={"temperature": 1})
    with pytest.raises(PruningError, match="method 'dense' takes no options"):
        RunConfig(method="dense", options={"temperature": 1})
    with pytest.raises(PruningError, match="option temperature of method 'grasp' must be a number, got 'hot'"):
        RunConfig(method="grasp", options={"temperature": "hot"})
    with pytest.raises(PruningError, match="option double of method 'synflow' must be true or false, got 1"):
        RunConfig(method="synflow", options={"double": 1})
    with pytest.raises(PruningError, match="option steps of method 'prospr' must be an integer, got 2.5"):
        RunConfig(method="prospr", options={"steps": 2.5})


def test_options_change_the_key_unless_at_the_methods_default():
    base = RunConfig(method="grasp")
    assert RunConfig(method="grasp", options={"temperature": 100}).key() != base.key()
    assert RunConfig(method="grasp", options={"temperature": 100}).key() != RunConfig(
        method="grasp", options={"temperature": 50}).key()
    assert RunConfig(method="grasp", options={"temperature": 200.0}).key() == base.key()  # GraSP's default
    assert base.key() == old_key(method="grasp")


@pytest.mark.parametrize("extra, expected", [
    (["--method", "grasp", "--option", "temp=1"], "unknown option 'temp' for method 'grasp'; valid options: "
                                                  "temperature"),
    (["--method", "snip", "--option", "temperature=1"], "method 'snip' takes no options"),
    (["--method", "grasp", "--option", "temperature=1", "--option", "temperature=2"], "--option temperature "
                                                                                      "given twice"),
    (["--method", "grasp", "--option", "temperature"], "an option is NAME=VALUE"),
    (["--method", "grasp", "--option", "temperature=hot"], "must be a number, got 'hot'"),
])
def test_bad_cli_options_are_one_clear_line(tmp_path, capsys, extra, expected):
    assert main(["run", "--epochs", "0", "--out", str(tmp_path / "r.jsonl"), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def test_sweep_options_apply_to_every_pruned_cell(tmp_path):
    cells, _ = load_sweep(_sweep(tmp_path, grid="sparsities = [0.5, 0.9]\n", options="temperature = 100\n",
                                 methods=("dense", "grasp")))
    assert sorted((c.method, c.sparsity, c.options.get("temperature")) for c in cells) == [
        ("dense", 0.0, None), ("grasp", 0.5, 100), ("grasp", 0.9, 100)]
    plain, _ = load_sweep(_sweep(tmp_path, grid="sparsities = [0.5, 0.9]\n", methods=("dense", "grasp")))
    assert {c.key() for c in cells if c.method == "dense"} == {c.key() for c in plain if c.method == "dense"}
    assert not {c.key() for c in cells if c.method == "grasp"} & {c.key() for c in plain}


@pytest.mark.parametrize("methods, options, expected", [
    (("grasp",), "temp = 1\n", r"\[options\] unknown option 'temp' for method 'grasp'; valid options: temperature"),
    (("dense", "grasp", "snip"), "temperature = 1\n", r"\[options\] method 'snip' takes no options"),
    (("synflow", "prospr"), "double = true\n", r"\[options\] unknown option 'double' for method 'prospr'"),
    (("grasp",), 'temperature = "hot"\n', r"\[options\] option temperature of method 'grasp' must be a number"),
    (("dense",), "temperature = 1\n", r"\[options\] apply to no cell: every method of the grid is 'dense'"),
])
def test_bad_sweep_options_name_their_line_and_the_method(tmp_path, methods, options, expected):
    cfg = _sweep(tmp_path, options="# the criterion's\n" + options, methods=methods)
    line = len(cfg.read_text().splitlines())
    with pytest.raises(ConfigError, match=rf"s\.toml:{line}: {expected}"):
        load_sweep(cfg)


def test_options_belong_in_their_own_table(tmp_path):
    with pytest.raises(ConfigError, match=r"s\.toml:4: \[recipe\] has unknown setting 'options'.*\[options\] table"):
        load_sweep(_sweep(tmp_path, "options = {temperature = 1}\n", methods=("grasp",)))
    cfg = tmp_path / "t.toml"
    cfg.write_text('options = 3\n[grid]\ndatasets = ["mnist-sample"]\nmodels = ["lenet300"]\nmethods = ["grasp"]\n')
    with pytest.raises(ConfigError, match=r"t\.toml:1: options must be a table"):
        load_sweep(cfg)


# --- options reach the criterion -----------------------------------------------------------------------------

RUN = ["run", "--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--train-subset", "200",
       "--method", "grasp", "--sparsity", "0.9", "--device", "cpu"]


def test_a_cli_option_reaches_the_criterion_at_init_and_is_recorded(tmp_path, monkeypatch):
    from earlyprune.experiments import run as run_module

    masks = []
    real = run_module.prune

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        masks.append({name: mask.clone() for name, mask in result.items()})
        return result

    monkeypatch.setattr(run_module, "prune", spy)
    out = tmp_path / "runs.jsonl"
    for extra in ([], ["--option", "temperature=1"], []):
        assert main([*RUN, "--epochs", "0", "--out", str(out), *extra]) == 0
    default, option, again = read_records(out)
    assert default["options"] == {} and option["options"] == {"temperature": 1}
    assert option["key"] != default["key"] == again["key"]
    assert all(torch.equal(masks[0][n], masks[2][n]) for n in masks[0])  # the run is deterministic...
    assert not all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])  # ...and the option changed the masks


def test_an_option_reaches_the_criterion_during_training(tmp_path, monkeypatch):
    import earlyprune.early
    from earlyprune.experiments.run import run_experiment

    pruners = []

    class Spy(earlyprune.early.EarlyPruner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pruners.append((kwargs, self))

    monkeypatch.setattr(earlyprune.early, "EarlyPruner", Spy)
    base = dict(dataset="mnist-sample", model="lenet300", width=0.25, train_subset=200, method="grasp",
                sparsity=0.9, epochs=1, when="epoch:1")
    records = [run_experiment(RunConfig(**base, options=options), progress=False, device="cpu")
               for options in ({}, {"temperature": 1})]
    assert [r["prune_events"][0]["epoch"] for r in records] == [1, 1]
    assert "temperature" not in pruners[0][0] and pruners[1][0]["temperature"] == 1
    first, second = (p.result for _, p in pruners)
    assert not all(torch.equal(first[n], second[n]) for n in first)
    assert records[1]["options"] == {"temperature": 1}


def test_the_record_is_flat_with_the_old_keys(tmp_path):
    out = tmp_path / "runs.jsonl"
    assert main([*RUN, "--epochs", "0", "--out", str(out), "--option", "temperature=1"]) == 0
    (record,) = read_records(out)
    for name in OLD_DEFAULTS:
        assert name in record, name
    assert record["method"] == "grasp" and record["sparsity"] == 0.9 and record["milestones"] == [0.5, 0.75]
    assert re.fullmatch(r"[0-9a-f]{16}", record["key"])


def test_sweep_values_accept_the_text_language_and_regression_models():
    from earlyprune.experiments.config import check_setting

    for name in ("textcnn", "transformer-encoder", "lstm-lm", "gpt-mini", "mlp-regressor"):
        assert check_setting("model", name) == name
