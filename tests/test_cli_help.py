"""The command line tells the truth about itself: ``--version``, a help text on every flag of every command,
the default shown wherever there is one."""

from __future__ import annotations

import argparse

import pytest

import earlyprune
from earlyprune.cli import build_parser


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"earlyprune {earlyprune.__version__}"


@pytest.mark.parametrize("command", ["run", "demo", "sweep", "report"])
def test_every_flag_has_help_and_shows_its_default(command):
    parser = _commands()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        shown = formatter._get_help_string(action) if hasattr(formatter, "_get_help_string") else action.help
        has_default = action.default not in (None, [], False, argparse.SUPPRESS) and action.nargs != 0
        if has_default:
            assert "default" in shown, f"{command} {action.option_strings}: default {action.default!r} not shown"


def test_run_help_names_the_recipe_defaults():
    text = _commands()["run"].format_help()
    for flag, default in [("--epochs", "20"), ("--batch-size", "100"), ("--lr", "0.1"), ("--momentum", "0.9"),
                          ("--seed", "0")]:
        block = text[text.index("\n  " + flag + " ") + 1:]
        block = block[:block.index("\n  --", 1)]
        assert f"(default: {default})" in " ".join(block.split()), block
