"""``mpqjax train``: the search's final step on its own: train one configuration (or the float model) from the float
model and export it, with the same keys and settings as ``mpqjax search``."""

from __future__ import annotations

import os

from mpqjax.cli import options

__all__ = ["TRAIN_SETTINGS", "add_train_command", "run_train"]

TRAIN_SETTINGS = ("model", "dataset", "data_dir", "target", "float_checkpoint", "seed", "float_epochs",
                  "float_learning_rate", "batch_size", "weight_decay", "calibration", "final_epochs",
                  "final_learning_rate")
# this command's short spellings (the search's stay accepted)
_SPELLINGS = {"final_epochs": ["--epochs"], "final_learning_rate": ["--lr"]}


def add_train_command(subparsers) -> None:
    """Declare ``mpqjax train``: the configuration, the search's training settings and the output folder."""
    from mpqjax.store.run_folder import FILES

    parser = subparsers.add_parser(
        "train",
        help="train one configuration (or the float model) and export it",
        description=(
            "Train a model at one configuration from the float model (transfer, calibration, quantisation-aware "
            f"training) as mpqjax search trains its best one, and export it to OUT/{FILES['model']}, with "
            f"OUT/{FILES['train']} holding its accuracies and cost. The configuration comes from a search's "
            f"{FILES['best']} (--config) or from --bits/--widths. With --float, train the float model itself (as "
            f"the search does) and save OUT/{FILES['float']} (usable as --params)."
        ),
    )
    what = parser.add_argument_group("configuration")
    what.add_argument("--config", help=f"a search's {FILES['best']}: its per-layer bits and widths")
    what.add_argument("--bits", type=options.number_list, help="bit-widths, one per layer or one for all (e.g. "
                      "8,4,3,8 or 4)")
    what.add_argument("--widths", type=options.number_list, help="width multipliers, one per layer or one for all "
                      "(default 1)")
    what.add_argument("--float", action="store_true", help="train the float model instead of a configuration")
    options.add_config_options(parser, TRAIN_SETTINGS, spellings=_SPELLINGS)
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=run_train)


def _check_combination(args) -> None:
    """Refuse what the command would otherwise ignore: a configuration given two ways, or options of the other mode
    (--float trains the float model; without it a configuration is trained from the float model)."""
    if args.float:
        if args.config or args.bits or args.widths:
            raise ValueError("--float trains the float model: it takes no --config, --bits or --widths")
        if hasattr(args, "final_epochs") or hasattr(args, "final_learning_rate"):
            raise ValueError("--float trains the float model as the search does: give --float-epochs and --float-lr, "
                             "not --epochs and --lr")
        if hasattr(args, "float_checkpoint"):
            raise ValueError(f"--float trains the float model: {args.config_options['float_checkpoint']} gives one "
                             "already (nothing to train)")
        options.refuse_unused(args, ["target", "calibration"], "with --float (the float model has no quantised "
                              "configuration)")
    elif args.config and (args.bits or args.widths):
        raise ValueError("--config gives the configuration (its bits and widths): it takes no --bits or --widths")
    elif not (args.config or args.bits):
        raise ValueError("give --config or --bits (or --float)")


def _per_layer(values, count: int, option: str) -> list:
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise ValueError(f"{option}: expected 1 or {count} values (one per layer), got {len(values)}")
    return list(values)


def _configuration(args, table):
    """The per-layer ``(bits, widths)`` of --config or --bits/--widths, checked (`mpqjax.nn.config.check_config`)."""
    from mpqjax.nn.config import check_config
    from mpqjax.store import run_folder
    from mpqjax.store.files import read_json

    if args.config:
        try:
            names, bits, widths = run_folder.read_best_layers(args.config)
        except ValueError as error:
            raise ValueError(f"--config: {error}") from None
        if names != list(table.names):
            raise ValueError(f"--config: its layers are not those of {table.model}")
        if "channel_bits" in read_json(args.config):
            raise ValueError("--config: its configuration is channel-wise (a weight bit-width per output channel); "
                             "mpqjax train takes per-layer bit-widths (the search trained and exported it: model.npz)")
    else:
        bits = _per_layer(args.bits, len(table), "--bits")
        widths = _per_layer(args.widths or (1.0,), len(table), "--widths")
    return check_config(table, bits, widths)


def run_train(args) -> int:
    """Train and export the configuration (or the float model) and write ``train.json``."""
    from mpqjax import cost as cost_model
    from mpqjax import search, store
    from mpqjax.nn import models
    from mpqjax.report.format import format_width
    from mpqjax.store.run_folder import file_path
    from mpqjax.training import train

    config = options.config_from_args(args)
    _check_combination(args)
    if any(os.path.exists(file_path(args.out, name)) for name in ("model", "train", "float")):
        raise ValueError(f"output folder {args.out!r} already holds a trained model; choose another --out")
    dataset = search.load_dataset(config)
    if args.float:
        return _train_float(config, dataset, args.out)
    table = models.layer_table(config.model, input_shape=dataset.input_shape)
    target = cost_model.load_target(config.target)
    bits, widths = _configuration(args, table)
    quant_model = search.quantized_model(config, dataset.num_classes, widths)
    train.config_arrays(quant_model, bits, widths, dataset.input_shape)  # the model's own checks, before training
    float_net = search.float_model_of(config, dataset)
    width_text = ", ".join(format_width(float(width)) for width in widths)
    print(f"training {config.model} at bits {list(map(int, bits))}, widths [{width_text}] for "
          f"{config.final_epochs} epochs (float model: {float_net.source})")
    trained = search.final_training(config, dataset, float_net, quant_model, bits, widths, what="the configuration")
    cost = cost_model.cost_report(table, bits, widths, target)
    os.makedirs(args.out, exist_ok=True)
    search.export_trained(file_path(args.out, "model"), config, dataset, quant_model, trained, bits, widths)
    summary = {"model": config.model, "dataset": config.dataset, "bits": bits, "widths": widths,
               "epochs": config.final_epochs, "validation_accuracy": trained.validation_accuracy,
               "test_accuracy": trained.test_accuracy, "float_model": float_net.source, "cost": cost["totals"]}
    store.atomic_write_json(file_path(args.out, "train"), summary)
    print(f"validation {trained.validation_accuracy:.4f}, test {trained.test_accuracy:.4f}; size reduction vs FiP16 "
          f"{float(cost['totals']['size_reduction_vs_fip16']):.2f}x; exported {file_path(args.out, 'model')}")
    return 0


def _train_float(config, dataset, out: str) -> int:
    """The search's float model (trained or from its cache), saved with its accuracies."""
    from mpqjax import search, store
    from mpqjax.store.run_folder import file_path
    from mpqjax.training import train

    float_net = search.float_model_of(config, dataset)
    os.makedirs(out, exist_ok=True)
    store.save_variables(file_path(out, "float"), float_net.variables)
    summary = {"model": config.model, "dataset": config.dataset, "float": True, "epochs": config.float_epochs,
               "validation_accuracy": train.evaluate(float_net.model, float_net.variables, dataset.validation),
               "test_accuracy": train.evaluate(float_net.model, float_net.variables, dataset.test),
               "float_model": float_net.source}
    store.atomic_write_json(file_path(out, "train"), summary)
    print(f"float {config.model}: validation {summary['validation_accuracy']:.4f}, test "
          f"{summary['test_accuracy']:.4f}; saved {file_path(out, 'float')}")
    return 0
