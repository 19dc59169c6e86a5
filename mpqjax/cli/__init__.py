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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed its one-line message (or the help)
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"mpqjax {args.command}: error: {message}", file=sys.stderr)
        return 2


# Sub-commands (each owned by the issue that builds its library part). Keep each block self-contained: it defines
# ``_add_<name>(subparsers)`` and ``_run_<name>(args)`` and registers itself with ``_SUBCOMMANDS.append(_add_<name>)``.

_SUBCOMMANDS: list = []

# -- cost ------------------------------------------------------------------------------------------------------


def _add_cost(subparsers):
    parser = subparsers.add_parser(
        "cost",
        help="size, latency, speed-up and energy of a configuration on a hardware target",
        description=(
            "Per-layer and total cost of a model configuration on a hardware target (mpqjax.cost). "
            "--bits and --widths take one value per layer in the model's layer order, or a single value that "
            "applies to every layer; the defaults (16 bits, width 1) give the FiP16 baseline."
        ),
    )
    parser.add_argument("--model", required=True, help="model zoo name, e.g. resnet20")
    parser.add_argument("--bits", default="16", help="comma-separated bit-width per layer (integers 1..16), or one")
    parser.add_argument("--widths", default="1", help="comma-separated width multiplier per layer (> 0), or one")
    parser.add_argument("--target", default="fpga", help="fpga (the paper's), generic, or a .json/.toml target file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=_run_cost)


def _cost_values(text: str, option: str) -> float | list[float]:
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            raise ValueError(f"{option}: {item.strip()!r} is not a number") from None
    return values[0] if len(values) == 1 else values


def _run_cost(args) -> int:
    import json

    from mpqjax import cost as cost_model
    from mpqjax.nn import models

    table = models.layer_table(args.model)
    target = cost_model.load_target(args.target)
    bits, widths = _cost_values(args.bits, "--bits"), _cost_values(args.widths, "--widths")
    report = cost_model.cost_report(table, bits, widths, target)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    fpga = isinstance(target, cost_model.FPGATarget)
    header = f"{'#':>3}  {'layer':<28} {'kind':<9} {'bits':>4} {'width':>6} {'in':>5} {'out':>5} {'weights':>9}"
    header += f" {'bytes':>9} {'MACs':>11}" + (f" {'mult/DSP':>8}" if fpga else "") + f" {'cycles':>11}"
    print(f"{args.model} on {target.name}")
    print(header)
    for index, row in enumerate(report["layers"]):
        line = f"{index:>3}  {row['name'][:28]:<28} {row['kind']:<9} {row['bits']:>4} {row['width']:>6.3g}"
        line += f" {row['in_channels']:>5} {row['out_channels']:>5} {row['weights']:>9,} {row['size_bytes']:>9,.0f}"
        line += f" {row['macs']:>11,}" + (f" {row['mults_per_dsp']:>8}" if fpga else "")
        cycles = row["latency_cycles"]
        print(line + (f" {cycles:>11,.0f}" if fpga else f" {cycles:>11.4g}"))
    totals = report["totals"]
    print(
        f"size     {totals['size_bytes']:,.0f} bytes ({totals['size_bytes'] / 1e6:.4g} MB): "
        f"{totals['size_reduction_vs_fip16']:.3g}x smaller than FiP16, "
        f"{totals['size_reduction_vs_fp32']:.3g}x smaller than FP32"
    )
    print(
        f"latency  {totals['latency_cycles']:,.0f} cycles = {totals['latency_seconds'] * 1e3:.4g} ms "
        f"at {target.clock_hz / 1e6:g} MHz: {totals['speedup_vs_fip16']:.3g}x faster than FiP16"
    )
    print(f"BOPs     {totals['bops']:.4g}   MACs {totals['macs']:,}   energy {totals['energy_joules'] * 1e6:.4g} uJ")
    return 0


_SUBCOMMANDS.append(_add_cost)

# -- hessian ---------------------------------------------------------------------------------------------------


def _add_hessian(subparsers):
    parser = subparsers.add_parser(
        "hessian",
        help="per-layer Hessian traces, their clusters and the pruned bit-width choices",
        description=(
            "Per-layer Hutchinson estimates of the Hessian trace of the float model's loss (mpqjax.sensitivity), "
            "k-means over the traces per weight and the candidate bit-widths of each layer. Prints a "
            "table and writes hessian.json and hessian.png to --out. Without --params the float model is "
            "first trained briefly (a Hessian of an untrained model means little) and saved as float_params.msgpack."
        ),
    )
    parser.add_argument("--model", required=True, help="model zoo name, e.g. digits_cnn")
    parser.add_argument("--dataset", default="digits", help="dataset name (default: digits)")
    parser.add_argument(
        "--params",
        help="float checkpoint of the model at width 1: a flax.serialization msgpack file of "
        "{'params': ..., 'batch_stats': ...} (as written to float_params.msgpack by this command)",
    )
    parser.add_argument("--out", help="output folder (default: runs/hessian/<model>)")
    parser.add_argument("--epochs", type=int, default=5, help="float training epochs without --params (default 5)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per Hessian batch (default 256)")
    parser.add_argument("--batches", type=int, default=2, help="training batches the Hessian averages (default 2)")
    parser.add_argument("--max-probes", type=int, default=256, help="probe budget (default 256)")
    parser.add_argument("--tol", type=float, default=1e-2, help="relative change of the running means to stop at")
    parser.add_argument("--chunk-size", type=int, help="probes per vmapped step (default: 1 on CPU, 8 on accelerators)")
    parser.add_argument("--probing", default="shared", help="shared (one HVP per probe) or per_layer")
    parser.add_argument("--bit-sets", default="8,6;6,4,3;4,3,2;3,2",
                        help="candidate bits per cluster, most sensitive first (default '8,6;6,4,3;4,3,2;3,2')")
    parser.add_argument("--fix-bits", default="", help="layers fixed by hand, e.g. 'conv1=8,head=8'")
    parser.add_argument("--log-scale", action="store_true", help="cluster log10 of the traces per weight")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes, the data split and the training")
    parser.set_defaults(run=_run_hessian)


def _hessian_bit_sets(text: str) -> list[tuple[int, ...]]:
    try:
        return [tuple(int(bits) for bits in group.split(",")) for group in text.split(";")]
    except ValueError:
        raise ValueError(f"--bit-sets: expected groups of integers like '8,6;6,4,3', got {text!r}") from None


def _hessian_fixed_bits(text: str) -> dict[str, int]:
    fixed = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, bits = item.partition("=")
        try:
            fixed[name.strip()] = int(bits)
        except ValueError:
            raise ValueError(f"--fix-bits: expected 'layer=bits' items, got {item!r}") from None
    return fixed


def _run_hessian(args) -> int:
    import os

    import jax
    import numpy as np

    from mpqjax import data, report, search, sensitivity, store
    from mpqjax.nn import models
    from mpqjax.sensitivity import hessian
    from mpqjax.training import train

    for option, value, low in [("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                               ("--batches", args.batches, 1), ("--max-probes", args.max_probes, 1),
                               ("--chunk-size", 1 if args.chunk_size is None else args.chunk_size, 1)]:
        if value < low:
            raise ValueError(f"{option} must be >= {low}, got {value}")
    if not args.tol > 0:
        raise ValueError(f"--tol must be > 0, got {args.tol}")
    if args.probing not in hessian.PROBINGS:
        raise ValueError(f"--probing must be one of {', '.join(hessian.PROBINGS)}, got {args.probing!r}")
    bit_sets, fixed_bits = _hessian_bit_sets(args.bit_sets), _hessian_fixed_bits(args.fix_bits)
    if args.params is not None and not os.path.exists(args.params):
        raise ValueError(f"--params: no such file {args.params!r}")

    dataset = data.load(args.dataset, seed=args.seed)
    table = models.layer_table(args.model, input_shape=dataset.input_shape)
    # A materialised float model at width 1: its parameters are the base layers of the table, nothing masked.
    model = models.get(args.model, quantize=False, num_classes=dataset.num_classes, widths=(1.0,) * len(table))
    # Check the cheap settings against the table before any training.
    sensitivity.prune_space(table, np.ones(len(table)), bit_sets=bit_sets, fixed_bits=fixed_bits)
    out = args.out or os.path.join("runs", "hessian", args.model)

    key = jax.random.key(args.seed)
    train_key, probe_key = jax.random.split(key)
    template = models.init_variables(train_key, model, dataset.input_shape)
    template = {name: template[name] for name in ("params", "batch_stats") if name in template}
    if args.params is not None:
        try:
            variables = store.load_variables(args.params, template)
        except ValueError:
            raise ValueError(f"--params: {args.params!r} is not a float checkpoint of {args.model} at width 1 "
                             f"for {args.dataset}") from None
        source = f"checkpoint {args.params}"
        os.makedirs(out, exist_ok=True)
        print(f"loaded float parameters from {args.params}")
    else:
        print(f"no --params given: training the float {args.model} on {args.dataset} for {args.epochs} epochs first "
              "(a Hessian of an untrained model means little)")
        variables, _ = train.train_float(train_key, model, dataset, epochs=args.epochs)
        variables = {name: variables[name] for name in template}
        os.makedirs(out, exist_ok=True)
        saved = os.path.join(out, "float_params.msgpack")
        store.save_variables(saved, variables)
        source = f"trained {args.epochs} epochs from seed {args.seed}, saved to {saved}"
    accuracy = train.evaluate(model, variables, dataset.validation)
    print(f"float validation accuracy {accuracy:.4f}")

    pruned, result = search.analyze_sensitivity(
        probe_key, model, variables, dataset, batch_size=args.batch_size, num_batches=args.batches,
        max_probes=args.max_probes, tol=args.tol, chunk_size=args.chunk_size, probing=args.probing,
        bit_sets=bit_sets, fixed_bits=fixed_bits, log_scale=args.log_scale)
    result["float_params"] = source
    result["float_validation_accuracy"] = accuracy
    result["hessian"]["seed"] = args.seed
    rows, run = result["layers"], result["hessian"]
    print(f"{run['probes']} probes ({'converged' if run['converged'] else 'probe budget reached'}) "
          f"on {run['examples']} training examples in {run['batches']} batches")
    print(f"{'#':>3}  {'layer':<28} {'weights':>9} {'trace':>11} {'trace/weight':>12} {'std err':>9} "
          f"{'cluster':>7}  candidate bits")
    for index, row in enumerate(rows):
        error = f"{row['std_error']:>9.3g}" if row["std_error"] is not None else f"{'-':>9}"
        cluster = row["cluster"] if row["cluster"] >= 0 else "fixed"
        candidates = "{" + ", ".join(map(str, row["candidate_bits"])) + "}"
        print(f"{index:>3}  {row['name'][:28]:<28} {row['weights']:>9,} {row['trace']:>11.4g} "
              f"{row['trace_per_weight']:>12.4g} {error} {cluster:>7}  {candidates}")
    print(f"search space: 10^{pruned.log10_size_before:.2f} configurations before pruning, "
          f"10^{pruned.log10_size_after:.2f} after")
    json_path, plot_path = os.path.join(out, "hessian.json"), os.path.join(out, "hessian.png")
    report.plot_hessian(plot_path, result)
    store.atomic_write_json(json_path, result)
    print(f"wrote {json_path} and {plot_path}")
    return 0


_SUBCOMMANDS.append(_add_hessian)


# -- search / train / report -----------------------------------------------------------------------------------


_SIZE_UNITS = {"b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def _quantity(text: str, units: dict[str, float], option: str, default_unit: str) -> float:
    """A positive number with an optional unit suffix, e.g. '16kB' or '1.5ms', in base units."""
    import math
    import re

    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", text)
    unit = (match.group(2) if match else "").lower() or default_unit
    try:
        value = float(match.group(1)) * units[unit] if match else math.nan
    except (ValueError, KeyError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option}: expected a positive number with an optional unit "
                         f"({', '.join(units)}), got {text!r}")
    return value


def _positive_float(option: str):
    def parse(text: str) -> float:
        import math

        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    parse.__name__ = option
    return parse


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated integers, got {text!r}") from None


def _float_list(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(","))
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _add_search(subparsers):
    from mpqjax import search

    defaults = search.SearchConfig()
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
    what = parser.add_argument_group("model, data and hardware")
    what.add_argument("--model", default=defaults.model, help=f"model zoo name (default {defaults.model})")
    what.add_argument("--dataset", default=defaults.dataset, help=f"dataset name (default {defaults.dataset})")
    what.add_argument("--data-dir", help="folder of downloaded datasets (tensorflow-datasets / CIFAR folders)")
    what.add_argument("--target", default=defaults.target, help="hardware target: fpga, generic, or a JSON/TOML file")
    what.add_argument("--params", "--float-checkpoint", dest="float_checkpoint",
                      help="float model at width 1: a flax msgpack file or an orbax checkpoint folder of "
                      "{'params', 'batch_stats'} (default: train one, cached)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-size", help="size limit, e.g. 16kB, 0.5MB, 20000 (bytes)")
    limits.add_argument("--min-size-reduction", type=_positive_float("--min-size-reduction"),
                        help=f"size limit as a reduction against FiP16 (default {defaults.min_size_reduction:g} "
                        "unless --max-size or --no-size-limit is given)")
    limits.add_argument("--no-size-limit", action="store_true", help="no size limit")
    limits.add_argument("--max-latency", help="latency limit, e.g. 2us, 1.5ms, 0.01 (seconds)")
    limits.add_argument("--min-speedup", type=_positive_float("--min-speedup"),
                        help="latency limit as a speed-up against FiP16")
    limits.add_argument("--max-energy", type=_positive_float("--max-energy"), help="energy limit in joules")
    limits.add_argument("--min-throughput", type=_positive_float("--min-throughput"),
                        help="throughput limit in inferences per second")
    limits.add_argument("--soft-limits", action="store_true",
                        help="evaluate configurations over a limit and penalise them (default: never propose them)")
    limits.add_argument("--penalty", type=_positive_float("--penalty"), default=defaults.penalty,
                        help=f"Lagrangian multiplier per relative violation (default {defaults.penalty:g})")
    space = parser.add_argument_group("search")
    space.add_argument("--trials", type=int, default=defaults.trials, help=f"configurations to evaluate "
                       f"(default {defaults.trials})")
    space.add_argument("--n-initial", type=int, default=defaults.n_initial,
                       help=f"random configurations first (default {defaults.n_initial})")
    space.add_argument("--seed", type=int, default=defaults.seed, help="seed of everything (default 0)")
    space.add_argument("--no-prune", action="store_true", help="skip the Hessian pruning: every layer may take "
                       "every bit-width")
    space.add_argument("--bits", default=",".join(map(str, defaults.bits)),
                       help="bit-widths of the unpruned space (default 8,6,4,3,2)")
    space.add_argument("--bit-sets", default=";".join(",".join(map(str, group)) for group in defaults.bit_sets),
                       help="candidate bits per sensitivity cluster, most sensitive first "
                       "(default 8,6;6,4,3;4,3,2;3,2)")
    space.add_argument("--widths", default=",".join(f"{w:g}" for w in defaults.widths),
                       help="width multipliers (default 0.75,0.875,1,1.125,1.25)")
    space.add_argument("--fix-bits", default="", help="layers fixed by hand, e.g. 'conv1=8,head=8'")
    space.add_argument("--log-scale", action="store_true", help="cluster log10 of the traces per weight")
    training = parser.add_argument_group("training")
    training.add_argument("--float-epochs", type=int, default=defaults.float_epochs)
    training.add_argument("--batch-size", type=int, default=defaults.batch_size)
    training.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs,
                          help=f"fine-tune epochs per trial (default {defaults.finetune_epochs}, "
                          "the paper's CIFAR value)")
    training.add_argument("--finetune-lr", type=float, default=defaults.finetune_learning_rate)
    training.add_argument("--final-epochs", type=int, default=defaults.final_epochs,
                          help=f"training of the best configuration (default {defaults.final_epochs}, as the paper)")
    training.add_argument("--final-lr", type=float, default=defaults.final_learning_rate,
                          help="peak one-cycle learning rate of the final training (default 0.01)")
    training.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    training.add_argument("--baseline", action="store_true",
                          help="also train the uniform-precision baseline (all layers at 8,6,4,3,2 bits, width 1)")
    devices = parser.add_argument_group("population and devices")
    devices.add_argument("--population", type=_population_size, default=defaults.population,
                         help="configurations proposed and fine-tuned together, or 'auto' to measure 1, 4 and 16 "
                              "and keep the fastest (default 1)")
    devices.add_argument("--strategy", default=defaults.strategy, choices=("auto", "sequential", "vmap", "scan"),
                         help="how a population trains: auto (measured when --population is auto or > 1), "
                              "sequential, vmap, or scan (default auto)")
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
    parser.set_defaults(run=_run_search)


def _search_config(args):
    from mpqjax import search

    size_reduction = args.min_size_reduction
    if args.no_size_limit:
        if args.max_size is not None or size_reduction is not None:
            raise ValueError("--no-size-limit contradicts --max-size / --min-size-reduction")
    elif size_reduction is None and args.max_size is None:
        size_reduction = search.DEFAULT_SIZE_REDUCTION
    fixed = tuple(sorted(_hessian_fixed_bits(args.fix_bits).items()))
    return search.SearchConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, target=args.target,
        max_size_bytes=None if args.max_size is None else _quantity(args.max_size, _SIZE_UNITS, "--max-size", "b"),
        min_size_reduction=size_reduction,
        max_latency_seconds=None if args.max_latency is None else _quantity(args.max_latency, _TIME_UNITS,
                                                                            "--max-latency", "s"),
        min_speedup=args.min_speedup, max_energy_joules=args.max_energy, min_throughput=args.min_throughput,
        soft_limits=args.soft_limits, penalty=args.penalty, trials=args.trials, n_initial=args.n_initial,
        seed=args.seed, prune=not args.no_prune, bits=_int_list(args.bits, "--bits"),
        bit_sets=tuple(_hessian_bit_sets(args.bit_sets)), widths=_float_list(args.widths, "--widths"),
        fixed_bits=fixed, log_scale=args.log_scale, float_checkpoint=args.float_checkpoint,
        float_epochs=args.float_epochs, batch_size=args.batch_size, finetune_epochs=args.finetune_epochs,
        finetune_learning_rate=args.finetune_lr, final_epochs=args.final_epochs, final_learning_rate=args.final_lr,
        weight_decay=args.weight_decay, baseline=args.baseline, population=args.population, strategy=args.strategy,
    )


def _population_size(text: str):
    """``--population``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return value


class _ProgressBar:
    """One status line on a terminal (rewritten in place), or a line every few trials in a log file."""

    def __init__(self, stream, *, width: int = 24):
        self.stream, self.width = stream, width
        self.interactive = stream.isatty()
        self.last_line = 0.0

    def __call__(self, event: dict) -> None:
        import time

        from mpqjax.report import format_seconds, format_size

        if event["event"] == "phase":
            self._print(f"{event['message']} ...", final=True)
        elif event["event"] == "trial":
            done, total, best = event["trial"], event["trials"], event["best"]
            filled = int(self.width * done / total)
            text = f"trial {done}/{total} [{'#' * filled}{'.' * (self.width - filled)}]"
            if best is not None:
                text += (f" best {best['objective']:.4f} (acc {best['validation_accuracy']:.4f}, "
                         f"{format_size(best['size_bytes'])}, {format_seconds(best['latency_seconds'])})")
            else:
                text += " best -"
            text += f" elapsed {event['elapsed']:.0f}s, ~{event['eta']:.0f}s left"
            now = time.monotonic()
            if self.interactive or done == total or now - self.last_line > 10:
                self.last_line = now
                self._print(text, final=done == total)

    def _print(self, text: str, *, final: bool) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _print_summary(result) -> None:
    from mpqjax.report import format_seconds, format_size

    best, timings = result.best, result.timings
    print(f"best configuration: trial {best['trial']} of {len(result.trials)}")
    print(f"{'layer':<28} {'bits':>4} {'width':>6} {'weights':>9} {'size':>10} {'cycles':>9}")
    for row in best["layers"]:
        print(f"{row['name'][:28]:<28} {row['bits']:>4} {row['width']:>6.3g} {row['weights']:>9,} "
              f"{format_size(row['size_bytes']):>10} {row['cycles']:>9,.0f}")
    print(f"accuracy: validation {best['validation_accuracy']:.4f} after the trial's fine-tune, "
          f"{best['final_validation_accuracy']:.4f} after the final training; test {best['test_accuracy']:.4f} "
          f"(float model {best['float_test_accuracy']:.4f})")
    print(f"size {format_size(best['size_bytes'])}: {best['size_reduction_vs_fip16']:.2f}x smaller than FiP16, "
          f"{best['size_reduction_vs_fp32']:.2f}x smaller than FP32; latency {format_seconds(best['latency_seconds'])}"
          f", {best['speedup_vs_fip16']:.2f}x faster than FiP16")
    total = max(timings.get("total", 0.0), 1e-9)
    split = ", ".join(f"{name} {seconds:.1f}s ({100 * seconds / total:.1f}%)" for name, seconds in timings.items()
                      if name != "total" and seconds > 0)
    print(f"time {total:.1f}s: {split}")
    print(f"results in {result.out_dir}: best_config.json, model.npz, report.md, pareto.png, trials.jsonl")


def _run_search(args) -> int:
    import os

    from mpqjax import search

    manual = [args.coordinator, args.num_processes, args.process_id]
    if any(value is not None for value in manual) and not args.distributed:
        raise ValueError("--coordinator, --num-processes and --process-id need --distributed")
    config = _search_config(args)
    if args.distributed:
        if args.out is None:
            raise ValueError("--distributed needs --out (every process must agree on the output folder)")
        from mpqjax.training import population

        index, _ = population.initialize_distributed(*manual)
        if index > 0:  # identical computations: every process keeps its own copy of the files
            args.out = f"{args.out}-process{index}"
    if not os.environ.get("MPQJAX_NO_COMPILATION_CACHE"):
        search.enable_compilation_cache()
    progress = None if args.quiet else _ProgressBar(sys.stderr)
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out (the folder of the interrupted search)")
    result = search.run(config, args.out, resume=args.resume, progress=progress)
    _print_summary(result)
    return 0


_SUBCOMMANDS.append(_add_search)


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train one configuration (or the float model) and export it",
        description=(
            "Train a model at one configuration from the float model (transfer, calibration, quantisation-aware "
            "training) and export it to OUT/model.npz, with OUT/train.json holding its accuracies and cost. The "
            "configuration comes from a search's best_config.json (--config) or from --bits/--widths. With --float, "
            "train the float model itself and save OUT/float_params.msgpack (usable as --params)."
        ),
    )
    parser.add_argument("--model", default="digits_cnn", help="model zoo name (default digits_cnn)")
    parser.add_argument("--dataset", default="digits", help="dataset name (default digits)")
    parser.add_argument("--data-dir", help="folder of downloaded datasets")
    parser.add_argument("--target", default="fpga", help="hardware target for the reported cost (default fpga)")
    parser.add_argument("--config", help="a search's best_config.json: its per-layer bits and widths")
    parser.add_argument("--bits", help="bit-widths, one per layer or one for all (e.g. 8,4,3,8 or 4)")
    parser.add_argument("--widths", help="width multipliers, one per layer or one for all (default 1)")
    parser.add_argument("--float", action="store_true", help="train the float model instead of a configuration")
    parser.add_argument("--params", help="float checkpoint to start from (default: train one, cached)")
    parser.add_argument("--epochs", type=int, default=90, help="training epochs (default 90)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak one-cycle learning rate (default 0.01)")
    parser.add_argument("--float-epochs", type=int, default=20, help="float training epochs without --params")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=_run_train)


def _per_layer(values: tuple, count: int, option: str) -> list:
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise ValueError(f"{option}: expected 1 or {count} values (one per layer), got {len(values)}")
    return list(values)


def _run_train(args) -> int:
    import os

    import jax
    import numpy as np

    from mpqjax import cost as cost_model
    from mpqjax import data, export, search, store
    from mpqjax.nn import models
    from mpqjax.training import train

    for option, value in [("--epochs", args.epochs), ("--float-epochs", args.float_epochs),
                          ("--batch-size", args.batch_size)]:
        if value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.model not in models.available():
        raise ValueError(f"unknown model {args.model!r}; available: {', '.join(models.available())}")
    if args.float and (args.config or args.bits or args.widths):
        raise ValueError("--float trains the float model: it takes no --config, --bits or --widths")
    if os.path.isdir(args.out) and any(name in os.listdir(args.out)
                                       for name in ("model.npz", "train.json", "float_params.msgpack")):
        raise ValueError(f"output folder {args.out!r} already holds a trained model; choose another --out")
    options = {"data_dir": args.data_dir} if args.data_dir else {}
    dataset = data.load(args.dataset, seed=args.seed, **options)
    table = models.layer_table(args.model, input_shape=dataset.input_shape)
    target = cost_model.load_target(args.target)
    key = jax.random.key(args.seed)
    float_key, train_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    if args.float:
        model = models.get(args.model, quantize=False, num_classes=dataset.num_classes, widths=(1.0,) * len(table))
        variables, losses = train.train_float(train_key, model, dataset, epochs=args.epochs, learning_rate=args.lr,
                                              batch_size=args.batch_size, weight_decay=args.weight_decay)
        if not np.all(np.isfinite(losses)):
            raise ValueError("training diverged (non-finite loss); lower --lr")
        os.makedirs(args.out, exist_ok=True)
        store.save_variables(os.path.join(args.out, "float_params.msgpack"),
                             {name: variables[name] for name in ("params", "batch_stats") if name in variables})
        summary = {"model": args.model, "dataset": args.dataset, "float": True, "epochs": args.epochs,
                   "validation_accuracy": train.evaluate(model, variables, dataset.validation),
                   "test_accuracy": train.evaluate(model, variables, dataset.test)}
        store.atomic_write_json(os.path.join(args.out, "train.json"), summary)
        print(f"float {args.model}: validation {summary['validation_accuracy']:.4f}, test "
              f"{summary['test_accuracy']:.4f}; saved {os.path.join(args.out, 'float_params.msgpack')}")
        return 0

    if args.config:
        best = store.read_json(args.config)
        try:
            rows = best["layers"]
            bits, widths = [row["bits"] for row in rows], [row["width"] for row in rows]
            names = [row["name"] for row in rows]
        except (KeyError, TypeError):
            raise ValueError(f"--config: {args.config!r} is not a best_config.json of mpqjax search") from None
        if names != list(table.names):
            raise ValueError(f"--config: its layers are not those of {args.model}")
    else:
        if args.bits is None:
            raise ValueError("give --config or --bits (or --float)")
        bits = _per_layer(_int_list(args.bits, "--bits"), len(table), "--bits")
        widths = _per_layer(_float_list(args.widths or "1", "--widths"), len(table), "--widths")
    bits, widths = models.validate_config(table, np.asarray(bits), np.asarray(widths, np.float32),
                                          max_width=max(models.DEFAULT_MAX_WIDTH, *widths))
    bits, widths = cost_model.validate_config(table, bits, widths)
    float_module, float_variables, source = search.float_model(
        float_key, args.model, dataset, checkpoint=args.params, epochs=args.float_epochs,
        batch_size=args.batch_size, weight_decay=args.weight_decay)
    model = models.get(args.model, num_classes=dataset.num_classes, max_width=max(models.DEFAULT_MAX_WIDTH, *widths))
    print(f"training {args.model} at bits {list(map(int, bits))}, widths {[float(w) for w in widths]} for "
          f"{args.epochs} epochs (float model: {source})")
    variables, losses = train.finetune(train_key, float_module, float_variables, model, dataset, bits=bits,
                                       widths=widths, epochs=args.epochs, batch_size=args.batch_size,
                                       learning_rate=args.lr, weight_decay=args.weight_decay)
    if not np.all(np.isfinite(losses)):
        raise ValueError("training diverged (non-finite loss); lower --lr")
    validation = train.evaluate(model, variables, dataset.validation, bits=bits, widths=widths)
    test = train.evaluate(model, variables, dataset.test, bits=bits, widths=widths)
    cost = cost_model.cost_report(table, bits, widths, target)
    os.makedirs(args.out, exist_ok=True)
    export.export_model(os.path.join(args.out, "model.npz"), model_name=args.model,
                        model_kwargs={"num_classes": dataset.num_classes, "max_width": model.max_width},
                        variables=variables, bits=bits, widths=widths, input_shape=dataset.input_shape,
                        num_classes=dataset.num_classes,
                        metadata={"dataset": args.dataset, "test_accuracy": test, "validation_accuracy": validation})
    summary = {"model": args.model, "dataset": args.dataset, "bits": bits, "widths": widths, "epochs": args.epochs,
               "validation_accuracy": validation, "test_accuracy": test, "float_model": source,
               "cost": cost["totals"]}
    store.atomic_write_json(os.path.join(args.out, "train.json"), summary)
    print(f"validation {validation:.4f}, test {test:.4f}; size reduction vs FiP16 "
          f"{float(cost['totals']['size_reduction_vs_fip16']):.2f}x; exported {os.path.join(args.out, 'model.npz')}")
    return 0


_SUBCOMMANDS.append(_add_train)


def _add_report(subparsers):
    parser = subparsers.add_parser(
        "report",
        help="regenerate the plots and report of a finished or running search",
        description="Rewrite trials.csv, pareto.png, hessian.png and report.md of a search output folder.",
    )
    parser.add_argument("out_dir", help="the search's output folder")
    parser.set_defaults(run=_run_report)


def _run_report(args) -> int:
    from mpqjax import report

    for path in report.write(args.out_dir):
        print(f"wrote {path}")
    return 0


_SUBCOMMANDS.append(_add_report)


if __name__ == "__main__":
    sys.exit(main())
