"""Specification of the ``mpqjax`` command's shared behaviour (mpqjax.cli.command): exit codes, messages, entry
points."""

import subprocess
import sys

from mpqjax import cli


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: mpqjax" in capsys.readouterr().err


def test_unknown_subcommand_exits_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert cli.main(["search", "--help"]) == 0
    assert "--max-size" in capsys.readouterr().out


def test_every_command_has_its_help(capsys):
    for command in ["cost", "hessian", "search", "train", "report"]:
        assert cli.main([command, "--help"]) == 0
        assert f"usage: mpqjax {command}" in capsys.readouterr().out


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "mpqjax.cli", "report", "/nowhere"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("mpqjax report: error:")


def test_every_option_of_every_command_has_a_help_text():
    import argparse

    parser = cli.build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    assert set(commands.choices) == {"cost", "hessian", "search", "train", "report", "export"}
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help and action.help.strip(), f"mpqjax {name} {action.option_strings or action.dest}"


def test_model_and_dataset_options_list_their_choices(capsys):
    from mpqjax import data
    from mpqjax.nn import models

    for command in ["search", "hessian", "train", "cost"]:
        assert cli.main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(name in text for name in models.available()), command
        if command != "cost":
            assert all(name in text for name in data.LOADERS), command
