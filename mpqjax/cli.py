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


# Sub-commands (each owned by the issue that builds its library part). Keep each block self-contained: it defines
# ``_add_<name>(subparsers)`` and ``_run_<name>(args)`` and registers itself with ``_SUBCOMMANDS.append(_add_<name>)``.

_SUBCOMMANDS: list = []

# -- cost ------------------------------------------------------------------------------------------------------


def _add_cost(subparsers):
    parser = subparsers.add_parser(
        "cost",
        help="size, latency, speed-up and energy of a configuration on a hardware target",
        description=(
            "Per-layer and total cost of a model configuration on a hardware target (mpqjax.hardware). "
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

    from mpqjax import hardware, models

    table = models.layer_table(args.model)
    target = hardware.load_target(args.target)
    bits, widths = _cost_values(args.bits, "--bits"), _cost_values(args.widths, "--widths")
    report = hardware.cost_report(table, bits, widths, target)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    fpga = isinstance(target, hardware.FPGATarget)
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
            "Per-layer Hutchinson estimates of the Hessian trace of the float model's loss (mpqjax.hessian), k-means "
            "over the traces per weight and the candidate bit-widths of each layer (mpqjax.sensitivity). Prints a "
            "table and writes hessian.json and hessian_traces.png to --out. Without --params the float model is "
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


def _hessian_write_atomic(path, write) -> None:
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        os.chmod(temporary, 0o644)  # mkstemp makes files private; results are ordinary files
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _hessian_write_text(path, text: str, mode: str = "w") -> None:
    def write(name):
        with open(name, mode) as handle:
            handle.write(text)

    _hessian_write_atomic(path, write)


def _hessian_plot(path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["layers"]
    names = [row["name"] for row in rows]
    trace = np.array([row["trace"] for row in rows], float)
    error = np.array([row["std_error"] if row["std_error"] is not None else 0.0 for row in rows], float)
    per_weight = np.array([row["trace_per_weight"] for row in rows], float)
    clusters = [row["cluster"] for row in rows]
    num_clusters = max(len(result["bit_sets"]), 1)
    colour_of = {c: plt.cm.viridis(0.1 + 0.75 * c / max(num_clusters - 1, 1)) for c in range(num_clusters)}
    colour_of[-1] = (0.65, 0.65, 0.65, 1.0)
    colours = [colour_of[c] for c in clusters]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(rows) + 2), 6.5), sharex=True)
    positions = np.arange(len(rows))
    top.bar(positions, trace, yerr=error, color=colours, capsize=2)
    top.set_ylabel("Hessian trace (± std. error)")
    top.set_title(f"{result['model']}: per-layer Hessian traces", fontsize=11)
    legend = [
        matplotlib.patches.Patch(color=colour_of[c], label=f"cluster {c}: bits {{{','.join(map(str, bits))}}}")
        for c, bits in enumerate(result["bit_sets"])
        if c in clusters
    ]
    if -1 in clusters:
        legend.append(matplotlib.patches.Patch(color=colour_of[-1], label="fixed by hand"))
    top.legend(handles=legend, fontsize=8)
    bottom.bar(positions, per_weight, color=colours)
    bottom.set_ylabel("trace per weight")
    if np.all(per_weight > 0):
        bottom.set_yscale("log")
    bottom.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
    figure.tight_layout()
    _hessian_write_atomic(path, lambda name: figure.savefig(name, dpi=120, format="png"))
    plt.close(figure)


def _run_hessian(args) -> int:
    import json
    import os

    import flax.serialization
    import jax
    import numpy as np
    import optax

    from mpqjax import data, hessian, models, sensitivity, train

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
    if args.params is not None and not os.path.isfile(args.params):
        raise ValueError(f"--params: no such file {args.params!r}")

    dataset = data.load(args.dataset, seed=args.seed)
    table = models.layer_table(args.model, input_shape=dataset.input_shape)
    # A materialised float model at width 1: its parameters are the base layers of the table, nothing masked.
    model = models.get(args.model, quantize=False, num_classes=dataset.num_classes, widths=(1.0,) * len(table))
    # Check the cheap settings against the table before any training.
    sensitivity.prune_space(table, np.ones(len(table)), bit_sets=bit_sets, fixed_bits=fixed_bits)
    out = args.out or os.path.join("runs", "hessian", args.model)
    os.makedirs(out, exist_ok=True)

    key = jax.random.key(args.seed)
    train_key, probe_key = jax.random.split(key)
    template = models.init_variables(train_key, model, dataset.input_shape)
    template = {name: template[name] for name in ("params", "batch_stats") if name in template}
    if args.params is not None:
        with open(args.params, "rb") as handle:
            try:
                restored = flax.serialization.msgpack_restore(handle.read())
                variables = flax.serialization.from_state_dict(template, restored)
                mismatched = jax.tree.map(lambda a, b: np.shape(a) != np.shape(b), template, variables)
            except Exception as error:  # msgpack and structure errors mean the same to the user
                mismatched = [type(error).__name__]
            if any(jax.tree.leaves(mismatched)):
                raise ValueError(f"--params: {args.params!r} is not a float checkpoint of {args.model} at width 1 "
                                 f"for {args.dataset}")
        source = f"checkpoint {args.params}"
        print(f"loaded float parameters from {args.params}")
    else:
        print(f"no --params given: training the float {args.model} on {args.dataset} for {args.epochs} epochs first "
              "(a Hessian of an untrained model means little)")
        variables, _ = train.train_float(train_key, model, dataset, epochs=args.epochs)
        variables = {name: variables[name] for name in ("params", "batch_stats") if name in variables}
        saved = os.path.join(out, "float_params.msgpack")
        _hessian_write_text(saved, flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)), "wb")
        source = f"trained {args.epochs} epochs from seed {args.seed}, saved to {saved}"
    accuracy = train.evaluate(model, variables, dataset.validation)
    print(f"float validation accuracy {accuracy:.4f}")

    others = {name: value for name, value in variables.items() if name != "params"}

    def loss_fn(params, batch):
        logits = model.apply({"params": params, **others}, batch[0], None, None, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    split = dataset.train
    if len(split) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(split)} training examples")
    batch_list = list(data.batches(None, split, args.batch_size, shuffle=False))[: args.batches]
    traces = hessian.layer_traces(probe_key, loss_fn, variables["params"], batch_list, layers=list(table.names),
                                  max_probes=args.max_probes, tol=args.tol, chunk_size=args.chunk_size,
                                  probing=args.probing)
    pruned = sensitivity.prune_space(table, traces, bit_sets=bit_sets, fixed_bits=fixed_bits, log_scale=args.log_scale)

    rows = [
        {**row, "cluster": int(pruned.cluster[index]), "candidate_bits": list(pruned.candidate_bits[index])}
        for index, row in enumerate(traces.to_dict()["layers"])
    ]
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "float_params": source,
        "float_validation_accuracy": accuracy,
        "hessian": {"examples": sum(len(b[1]) for b in batch_list), "batches": len(batch_list),
                    "probes": int(traces.probes[0]), "converged": traces.converged, "tol": args.tol,
                    "probing": args.probing, "seed": args.seed},
        "layers": rows,
        "centroids": [float(c) for c in pruned.centroids],
        "bit_sets": [list(s) for s in bit_sets],
        "fixed_bits": fixed_bits,
        "log10_size_before": pruned.log10_size_before,
        "log10_size_after": pruned.log10_size_after,
    }
    print(f"{traces.probes[0]} probes ({'converged' if traces.converged else 'probe budget reached'}) on "
          f"{result['hessian']['examples']} training examples in {len(batch_list)} batches")
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
    json_path, plot_path = os.path.join(out, "hessian.json"), os.path.join(out, "hessian_traces.png")
    _hessian_plot(plot_path, result)
    _hessian_write_text(json_path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path} and {plot_path}")
    return 0


_SUBCOMMANDS.append(_add_hessian)


# -- search / train / report -----------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
