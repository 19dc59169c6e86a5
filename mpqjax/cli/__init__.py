"""The ``mpqjax`` command line: it parses, prints and maps errors to exit codes; the work is the library's.

Modules: `command` (the parser, `main`, exit codes), `options` (options generated from `mpqjax.search.SearchConfig`'s
metadata, unit parsing), `display` (progress bar, summary, tables) and one module per command (`cost`, `hessian`,
`search`, `train`, `report`, `export`). The console script is ``mpqjax = "mpqjax.cli:main"``; ``python -m mpqjax.cli``
runs the same.

Example:
    >>> from mpqjax import cli
    >>> cli.main(["search", "--trials", "30", "--max-size", "16kB", "--out", "runs/digits"])
    0
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["command", "cost", "display", "export", "hessian", "options", "report", "search", "train"],
    names={
        "COMMANDS": "command", "build_parser": "command", "main": "command",
        **{name: "options" for name in (
            "SIZE_UNITS", "TIME_UNITS", "add_config_options", "bit_sets", "config_from_args", "fixed_bits",
            "float_list", "format_default", "given_options", "int_list", "number_list", "option_names", "population",
            "quantity", "refuse_unused", "seconds", "size_bytes")},
        **{name: "display" for name in (
            "RESULT_FILES", "ProgressBar", "interrupted", "print_cost", "print_hessian", "print_summary")},
        "add_cost_command": "cost", "run_cost": "cost",
        "HESSIAN_SETTINGS": "hessian", "add_hessian_command": "hessian", "run_hessian": "hessian",
        **{name: "search" for name in (
            "INTERRUPTED", "SEARCH_SETTINGS", "add_search_command", "recorded_settings", "run_search",
            "search_config")},
        "TRAIN_SETTINGS": "train", "add_train_command": "train", "run_train": "train",
        "add_report_command": "report", "run_report": "report",
        "FORMATS": "export", "add_export_command": "export", "run_export": "export",
    },
)
