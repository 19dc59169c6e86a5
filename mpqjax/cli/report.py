"""``mpqjax report``: regenerate the derived files of a search folder."""

from __future__ import annotations

__all__ = ["add_report_command", "run_report"]


def add_report_command(subparsers) -> None:
    """Declare ``mpqjax report``."""
    parser = subparsers.add_parser(
        "report",
        help="regenerate the plots and report of a finished or running search",
        description="Rewrite trials.csv, pareto.png, hessian.png and report.md of a search output folder.",
    )
    parser.add_argument("out_dir", help="the search's output folder")
    parser.set_defaults(run=run_report)


def run_report(args) -> int:
    """Write the report (`mpqjax.report.write`) and list the files written."""
    from mpqjax import report

    for path in report.write(args.out_dir):
        print(f"wrote {path}")
    return 0
