"""``mpqjax cost``: size, latency, speed-up and energy of a configuration on a hardware target."""

from __future__ import annotations

import json

from mpqjax.cli import display, options
from mpqjax.nn.config import MAX_BITS, MIN_BITS

__all__ = ["add_cost_command", "run_cost"]


def add_cost_command(subparsers) -> None:
    """Declare ``mpqjax cost`` and its options."""
    parser = subparsers.add_parser(
        "cost",
        help="size, latency, speed-up and energy of a configuration on a hardware target",
        description=(
            "Per-layer and total cost of a model configuration on a hardware target (mpqjax.cost). "
            "--bits and --widths take one value per layer in the model's layer order, or a single value that "
            "applies to every layer; the defaults (16 bits, width 1) give the FiP16 baseline."
        ),
    )
    from mpqjax.nn import models

    parser.add_argument("--model", required=True, help=f"model zoo name ({', '.join(models.available())}) or your "
                        "own model's factory, package.module:function")
    parser.add_argument("--input-shape", type=options.number_list, default=None,
                        help="one input example's shape, e.g. 32,32,3 (default: the zoo model's; needed for your "
                        "own model)")
    parser.add_argument("--bits", type=options.number_list, default=(float(MAX_BITS),),
                        help=f"comma-separated bit-width per layer (integers {MIN_BITS}..{MAX_BITS}), or one")
    parser.add_argument("--widths", type=options.number_list, default=(1.0,),
                        help="comma-separated width multiplier per layer (> 0), or one")
    parser.add_argument("--target", default="fpga", help="fpga (the paper's), generic, or a .json/.toml target file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run_cost)


def run_cost(args) -> int:
    """Cost the configuration (checked by `mpqjax.nn.config.check_config`) and print the table or the JSON."""
    from mpqjax import cost as cost_model
    from mpqjax.nn import models
    from mpqjax.nn.config import check_config

    shape = None if args.input_shape is None else tuple(int(size) for size in args.input_shape)
    if shape is not None and any(size < 1 or size != int(size) for size in args.input_shape):
        raise ValueError(f"--input-shape must be positive integers, got {list(args.input_shape)}")
    table = models.layer_table(args.model, input_shape=shape)
    target = cost_model.load_target(args.target)
    one = lambda values: values[0] if len(values) == 1 else list(values)  # noqa: E731  (one value: every layer)
    bits, widths = check_config(table, one(args.bits), one(args.widths))
    report = cost_model.cost_report(table, bits, widths, target)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        display.print_cost(args.model, target, report, fpga=isinstance(target, cost_model.FPGATarget))
    return 0
