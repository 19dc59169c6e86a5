"""Specification of the ``mpqjax`` command's shared behaviour (exit codes, messages)."""

from mpqjax import cli


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: mpqjax" in capsys.readouterr().err


def test_unknown_subcommand_exits_2(capsys):
    try:
        cli.main(["no-such-command"])
    except SystemExit as exit_:
        assert exit_.code == 2
    else:
        raise AssertionError("argparse accepted an unknown sub-command")
    assert "invalid choice" in capsys.readouterr().err
