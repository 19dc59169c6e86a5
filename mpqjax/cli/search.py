"""``mpqjax search``: the main job (`mpqjax.search.run`) with its options generated from `SearchConfig`.

``--resume`` continues the search in ``--out`` with the settings recorded there (options given on the command line
must agree with them, except ``--trials`` and ``--baseline``), so ``mpqjax search --out DIR --resume`` is the whole
command. Ctrl-C stops a search with one line that says how to resume it, and exit code 130.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

from mpqjax.cli import display, options
from mpqjax.search.config import SearchConfig
from mpqjax.store import run_folder
from mpqjax.store.compilation_cache import enable_default_compilation_cache

__all__ = ["INTERRUPTED", "SEARCH_SETTINGS", "add_search_command", "recorded_settings", "run_search",
           "search_config"]

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it

SEARCH_SETTINGS = tuple(field.name for field in dataclasses.fields(SearchConfig))  # every setting


def add_search_command(subparsers) -> None:
    """Declare ``mpqjax search``: every `SearchConfig` setting, the devices and the output folder."""
    parser = subparsers.add_parser(
        "search",
        help="find per-layer bit-widths and widths under size/latency limits (the main job)",
        description=(
            "Algorithm 1 of the paper: train (or load) the float model, prune each layer's bit-widths by Hessian "
            "sensitivity, run k-means TPE over short quantisation-aware fine-tunes under the hardware limits, then "
            "train the best configuration longer, export it and write a report. With no arguments: digits_cnn on "
            "the embedded digits data, FPGA target, size at most 1/6 of the FiP16 model (a few minutes on a CPU)."
        ),
    )
    options.add_config_options(parser, SEARCH_SETTINGS, notes={
        "min_size_reduction": "none when --max-size or --no-size-limit is given"})
    parser.add_argument("--no-size-limit", action="store_true", help="no size limit")
    devices = parser.add_argument_group("distributed runs")
    devices.add_argument("--distributed", action="store_true",
                         help="multi-process: join a jax.distributed run first (every process runs the same "
                              "command; process i > 0 writes to OUT-process<i>); the cluster is detected (Slurm, Open "
                              "MPI, TPU, Kubernetes) unless --coordinator, --num-processes and --process-id are given")
    devices.add_argument("--coordinator", help="with --distributed: host:port of process 0's coordinator")
    devices.add_argument("--num-processes", type=int, help="with --distributed: how many processes take part")
    devices.add_argument("--process-id", type=int, help="with --distributed: this process's index, 0 .. N-1")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="output folder (default: a new runs/search/<model>-<dataset>-<time>)")
    output.add_argument("--resume", action="store_true",
                        help="continue the search in --out after an interruption, with the settings recorded there "
                             "(--trials may grow)")
    output.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(run=run_search)


def recorded_settings(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a search folder's ``search.json`` records, as `SearchConfig` values (lists as tuples), or None
    when it records none readable (`mpqjax.search.run` then says what is wrong with the folder)."""
    try:
        settings = run_folder.load_run(out_dir).search.get("settings")
    except (ValueError, OSError):
        return None
    if not isinstance(settings, dict):
        return None

    def as_tuples(value):
        return tuple(as_tuples(item) for item in value) if isinstance(value, list) else value

    return {name: as_tuples(value) for name, value in settings.items() if name in SEARCH_SETTINGS}


def search_config(args, recorded: Mapping[str, Any] | None = None) -> SearchConfig:
    """The `SearchConfig` of the options given. A size limit given in bytes replaces the default reduction limit
    (given both ways, the stricter applies); ``--no-size-limit`` drops both.

    Args:
        args: the parsed options.
        recorded: a resumed search's settings (`recorded_settings`): the settings whose options are not given keep
            these values (the size limit as a whole when any size option is given).
    """
    given_size, given_reduction = hasattr(args, "max_size_bytes"), hasattr(args, "min_size_reduction")
    size_given = given_size or given_reduction or args.no_size_limit
    kept = {name: value for name, value in (recorded or {}).items() if not hasattr(args, name)
            and not (size_given and name in ("max_size_bytes", "min_size_reduction"))}
    if args.no_size_limit:
        if given_size or given_reduction:
            raise ValueError("--no-size-limit contradicts --max-size / --min-size-reduction")
        return options.config_from_args(args, **kept, min_size_reduction=None)
    if given_size and not given_reduction:
        return options.config_from_args(args, **kept, min_size_reduction=None)
    return options.config_from_args(args, **kept)


def run_search(args) -> int:
    """Run the search (joining a distributed run first when asked) and print its summary; Ctrl-C prints how to
    resume and returns `INTERRUPTED`."""
    manual = [args.coordinator, args.num_processes, args.process_id]
    if any(value is not None for value in manual) and not args.distributed:
        raise ValueError("--coordinator, --num-processes and --process-id need --distributed")
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out (the folder of the interrupted search)")
    config = search_config(args, recorded_settings(args.out) if args.resume else None)
    if args.distributed and args.out is None:
        raise ValueError("--distributed needs --out (every process must agree on the output folder)")
    out_dir = args.out
    try:
        from mpqjax import search

        out_dir = _output_folder(args, config, manual)
        enable_default_compilation_cache()
        with display.ProgressBar(sys.stderr, enabled=not args.quiet) as progress:
            result = search.run(config, out_dir, resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        print(f"mpqjax search: {display.interrupted(out_dir)}", file=sys.stderr)
        return INTERRUPTED
    display.print_summary(result)
    return 0


def _output_folder(args, config: SearchConfig, manual: list) -> str:
    """The folder this process writes: ``--out`` (default: a new one), joining the distributed run first when
    asked (process i > 0 writes ``OUT-process<i>``: identical computations, every process keeps its own copy)."""
    from mpqjax import search
    from mpqjax.training import devices

    if not args.distributed:
        return args.out if args.out is not None else search.default_out_dir(config)
    index, _ = devices.initialize_distributed(*manual)
    return f"{args.out}-process{index}" if index > 0 else args.out
