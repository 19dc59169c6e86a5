"""The ``mpqjax`` command: argument parsing, progress display and exit codes (0 ok, 2 bad input).

Each sub-command is a pair of functions here: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args) -> int`` calls the library. Algorithms live in the library, never here. Bad input raises
`ValueError` (or `OSError` for files) in the library; `main` turns it into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message for bad arguments (argparse's own default is also 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``mpqjax`` argument parser with every sub-command."""
    parser = _Parser(prog="mpqjax", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", parser_class=_Parser)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mpqjax`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"mpqjax {args.command}: error: {message}", file=sys.stderr)
        return 2


# Sub-commands (each owned by the issue that builds its library part). Keep each block self-contained.

# -- cost ------------------------------------------------------------------------------------------------------

# -- hessian ---------------------------------------------------------------------------------------------------

# -- search / train / report -----------------------------------------------------------------------------------


_SUBCOMMANDS: list = []

if __name__ == "__main__":
    sys.exit(main())
