"""``mpqjax search``: the main job (`mpqjax.search.run`) with its options generated from `SearchConfig`."""

from __future__ import annotations

import dataclasses
import os
import sys

from mpqjax.cli import display, options
from mpqjax.search.config import SearchConfig

__all__ = ["SEARCH_SETTINGS", "add_search_command", "run_search", "search_config"]

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
    output.add_argument("--resume", action="store_true", help="continue the search in --out after an interruption")
    output.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(run=run_search)


def search_config(args) -> SearchConfig:
    """The `SearchConfig` of the options given. A size limit given in bytes replaces the default reduction limit
    (given both ways, the stricter applies); ``--no-size-limit`` drops both."""
    given_size, given_reduction = hasattr(args, "max_size_bytes"), hasattr(args, "min_size_reduction")
    if args.no_size_limit:
        if given_size or given_reduction:
            raise ValueError("--no-size-limit contradicts --max-size / --min-size-reduction")
        return options.config_from_args(args, min_size_reduction=None)
    if given_size and not given_reduction:
        return options.config_from_args(args, min_size_reduction=None)
    return options.config_from_args(args)


def run_search(args) -> int:
    """Run the search (joining a distributed run first when asked) and print its summary."""
    from mpqjax import search
    from mpqjax.training import devices

    manual = [args.coordinator, args.num_processes, args.process_id]
    if any(value is not None for value in manual) and not args.distributed:
        raise ValueError("--coordinator, --num-processes and --process-id need --distributed")
    config = search_config(args)
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out (the folder of the interrupted search)")
    if args.distributed:
        if args.out is None:
            raise ValueError("--distributed needs --out (every process must agree on the output folder)")
        index, _ = devices.initialize_distributed(*manual)
        if index > 0:  # identical computations: every process keeps its own copy of the files
            args.out = f"{args.out}-process{index}"
    if not os.environ.get("MPQJAX_NO_COMPILATION_CACHE"):
        search.enable_compilation_cache()
    progress = None if args.quiet else display.ProgressBar(sys.stderr)
    result = search.run(config, args.out, resume=args.resume, progress=progress)
    display.print_summary(result)
    return 0
