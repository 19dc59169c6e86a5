"""Regenerating a search folder's derived files: ``trials.csv``, ``pareto.png``, ``hessian.png`` and ``report.md``.

Example:
    >>> write("runs/digits")
    ['runs/digits/trials.csv', 'runs/digits/pareto.png', 'runs/digits/hessian.png', 'runs/digits/report.md']
"""

from __future__ import annotations

import os

from mpqjax.report.plots import plot_hessian, plot_pareto
from mpqjax.report.records import best_record
from mpqjax.report.summary import markdown
from mpqjax.report.tables import write_trials_csv
from mpqjax.store.files import atomic_write_text
from mpqjax.store.run_folder import file_path, load_run

__all__ = ["write"]


def write(out_dir: str | os.PathLike) -> list[str]:
    """Regenerate a search folder's derived files: trials.csv, pareto.png, hessian.png (with hessian.json), report.md.

    All of them show the same best configuration (`best_record`): the ``best`` column of trials.csv, the star of
    pareto.png and report.md's best configuration.

    Each file is written atomically, so a reader never sees half of one; works while the search is still running.

    Args:
        out_dir: the search's output folder.

    Returns:
        The paths written, report.md last.

    Raises:
        ValueError: not a search folder (see `load_run`); nothing is written then.

    Example:
        >>> write("runs/digits")
        ['runs/digits/trials.csv', 'runs/digits/pareto.png', 'runs/digits/hessian.png', 'runs/digits/report.md']
    """
    run = load_run(out_dir)
    written = [file_path(run.out_dir, "csv"), file_path(run.out_dir, "pareto")]
    best, _ = best_record(run)
    write_trials_csv(written[0], run.trials, best=None if best is None else best.get("trial"))
    plot_pareto(written[1], run)
    if run.hessian is not None:
        written.append(file_path(run.out_dir, "hessian_plot"))
        plot_hessian(written[-1], run.hessian)
    written.append(file_path(run.out_dir, "report"))
    atomic_write_text(written[-1], markdown(run))
    return written
