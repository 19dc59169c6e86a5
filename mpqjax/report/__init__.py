"""Reports of a search: the trial table (CSV), the Pareto and Hessian plots and a markdown summary.

Everything here reads a search's output folder (`mpqjax.store.run_folder`: ``search.json``, ``trials.jsonl``,
``baseline.jsonl``, ``hessian.json``, ``best_config.json``) and writes derived files, so it works on a finished
search and on one that is still running, and never imports JAX. `write` regenerates every derived file;
``mpqjax report OUTDIR`` calls it.

Modules: `format` (numbers, widths exactly, markdown tables), `pareto` (`pareto_front`), `records` (the best record,
how it was chosen, baseline labels), `tables` (``trials.csv``), `plots` (``pareto.png``, ``hessian.png``), `summary`
(``report.md``) and `folder` (`write`). `Run` and `load_run` are the run folder's and `best_trial` the store's one
definition of the best trial (`mpqjax.store.selection`), re-exported for convenience.

Example:
    >>> run = load_run("runs/digits")
    >>> front = pareto_front([t["validation_accuracy"] for t in run.trials], [t["size_bytes"] for t in run.trials])
    >>> write("runs/digits")   # trials.csv, pareto.png, hessian.png, report.md
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["folder", "format", "pareto", "plots", "records", "summary", "tables"],
    names={
        **{name: "format" for name in (
            "ENERGY_UNITS", "MISSING", "SIZE_UNITS", "TIME_UNITS", "format_count", "format_energy", "format_factor",
            "format_percent", "format_quantity", "format_seconds", "format_size", "format_values", "format_width",
            "markdown_table", "unit_for")},
        "pareto_front": "pareto",
        **{name: "records" for name in ("best_record", "resolution_of", "selection_note", "uniform_label")},
        "write_trials_csv": "tables",
        "plot_hessian": "plots", "plot_pareto": "plots",
        "markdown": "summary",
        "write": "folder",
        # The run folder's reading and the one best trial (mpqjax.store), through the modules using them.
        "Run": "records", "best_trial": "records", "load_run": "folder",
    },
)
