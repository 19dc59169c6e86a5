"""Specification of the ``mpqjax`` command's shared behaviour (exit codes, messages)."""

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
