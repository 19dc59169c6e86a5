"""``mpqjax hessian``: the search's sensitivity step on its own: per-layer Hessian traces, clusters and candidate
bits of the float model (the same float model, probes and pruning as ``mpqjax search`` with the same settings)."""

from __future__ import annotations

import os

from mpqjax.cli import display, options

__all__ = ["HESSIAN_SETTINGS", "add_hessian_command", "run_hessian"]

HESSIAN_SETTINGS = ("model", "dataset", "data_dir", "float_checkpoint", "seed", "float_epochs", "float_learning_rate",
                    "batch_size", "weight_decay", "hessian_batch_size", "hessian_batches", "hessian_max_probes",
                    "hessian_tol", "bits", "widths", "bit_sets", "fixed_bits", "log_scale")
# this command's short spellings (the search's stay accepted)
_SPELLINGS = {"float_epochs": ["--epochs"], "hessian_batches": ["--batches"], "hessian_max_probes": ["--max-probes"],
              "hessian_tol": ["--tol"]}


def add_hessian_command(subparsers) -> None:
    """Declare ``mpqjax hessian`` and its options (the search's float-model and sensitivity settings)."""
    from mpqjax.sensitivity.hessian import PROBINGS
    from mpqjax.store.run_folder import FILES

    parser = subparsers.add_parser(
        "hessian",
        help="per-layer Hessian traces, their clusters and the pruned bit-width choices",
        description=(
            "Per-layer Hutchinson estimates of the Hessian trace of the float model's loss (mpqjax.sensitivity), "
            "k-means over the traces per weight and the candidate bit-widths of each layer: the sensitivity step of "
            f"mpqjax search. Prints a table and writes {FILES['hessian']} and {FILES['hessian_plot']} to --out. "
            "Without --params the float model is the search's (trained with the same settings, or taken from its "
            f"cache) and saved as {FILES['float']}."
        ),
    )
    options.add_config_options(parser, HESSIAN_SETTINGS, spellings=_SPELLINGS)
    probes = parser.add_argument_group("probes")
    probes.add_argument("--chunk-size", type=int, help="probes per vmapped step (default: 1 on CPU, 8 on "
                        "accelerators)")
    probes.add_argument("--probing", default="shared", help=f"{' or '.join(PROBINGS)}: one HVP per probe for every "
                        "layer, or one per layer (default shared)")
    parser.add_argument("--out", help="output folder (default: runs/hessian/<model>)")
    parser.set_defaults(run=run_hessian)


def run_hessian(args) -> int:
    """The float model (from --params or the search's float step), its sensitivity, the table, JSON and plot."""
    from mpqjax import report, search, store
    from mpqjax.nn import models
    from mpqjax.sensitivity.hessian import PROBINGS
    from mpqjax.store.run_folder import file_path
    from mpqjax.training import train

    config = options.config_from_args(args)
    if config.float_checkpoint is not None:  # these only train the float model here (no fine-tune follows)
        options.refuse_unused(args, ["batch_size", "weight_decay"], f"with {args.config_options['float_checkpoint']}: "
                              "the float model is read from it, not trained")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.probing not in PROBINGS:
        raise ValueError(f"--probing must be one of {', '.join(PROBINGS)}, got {args.probing!r}")
    dataset = search.load_dataset(config)
    search.full_space(config, models.layer_table(config.model, input_shape=dataset.input_shape))  # before training
    out = args.out or os.path.join("runs", "hessian", config.model)

    if config.float_checkpoint is None:
        print(f"no --params given: training the float {config.model} on {config.dataset} for {config.float_epochs} "
              "epochs first, or taking the search's cached one (a Hessian of an untrained model means little)")
    float_net = search.float_model_of(config, dataset)
    os.makedirs(out, exist_ok=True)
    source = float_net.source
    if config.float_checkpoint is None:
        store.save_variables(file_path(out, "float"), float_net.variables)
        source += f", saved to {file_path(out, 'float')}"
    else:
        print(f"loaded float parameters from {config.float_checkpoint}")
    accuracy = train.evaluate(float_net.model, float_net.variables, dataset.validation)
    print(f"float validation accuracy {accuracy:.4f}")

    _, summary = search.sensitivity_of(config, float_net, dataset, chunk_size=args.chunk_size, probing=args.probing)
    summary.update(float_params=source, float_validation_accuracy=accuracy)
    summary["hessian"]["seed"] = config.seed
    display.print_hessian(summary)
    json_path, plot_path = file_path(out, "hessian"), file_path(out, "hessian_plot")
    report.plot_hessian(plot_path, summary)
    store.atomic_write_json(json_path, summary)
    print(f"wrote {json_path} and {plot_path}")
    return 0
