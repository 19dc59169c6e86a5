"""``mpqjax export``: a finished search's (or ``mpqjax train``'s) model as a deployable integer model, an ONNX model
or Qwix rules."""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["FORMATS", "add_export_command", "run_export"]

FORMATS = ("integer", "onnx", "qwix")
_DEFAULT_FILES = {"integer": "integer", "onnx": "onnx", "qwix": "qwix"}


def add_export_command(subparsers) -> None:
    """Declare ``mpqjax export``."""
    from mpqjax.export.bitpack import LAYOUTS
    from mpqjax.store.run_folder import FILES

    parser = subparsers.add_parser(
        "export",
        help="write a finished model as an integer-only model file, ONNX or Qwix rules",
        description=(
            f"Lower the model of a search's (or mpqjax train's) output folder to integer-only arithmetic and write "
            f"it: --format integer (default) writes RUN_DIR/{FILES['integer']}, the integer program as StableHLO "
            f"with its weights bit-packed, which mpqjax.export.load_program runs without the model's code; "
            f"--format onnx writes RUN_DIR/{FILES['onnx']} for onnxruntime (pip install \"mpqjax[onnx]\"); "
            f"--format qwix writes RUN_DIR/{FILES['qwix']}, the configuration as Qwix rules "
            f"(pip install \"mpqjax[qwix]\"). The integer and ONNX files are checked against the folder's "
            f"fake-quantised model on the test split."),
    )
    parser.add_argument("run_dir", help="a finished search's or mpqjax train's output folder")
    parser.add_argument("--format", choices=FORMATS, default="integer", help="what to write (default integer)")
    parser.add_argument("--layout", choices=LAYOUTS, default="bitstream",
                        help="weight packing of the integer file: bitstream (each weight at its bit-width, "
                             "default) or dsp (the packed-DSP memory image)")
    parser.add_argument("--float-input", action="store_true",
                        help="the program takes the model's normalised float inputs instead of raw 8-bit pixels")
    parser.add_argument("--out", default=None, help="the file to write (default: in RUN_DIR, see above)")
    parser.set_defaults(run=run_export)


def _test_inputs(program, run):
    """The test split as the integer program takes it (raw pixels or float inputs)."""
    test = run.dataset.test
    if program.input_dtype == np.uint8:
        return np.clip(np.round(test.x * run.dataset.std + run.dataset.mean), 0, 255).astype(np.uint8)
    return test.x


def _agreement(logits, reference) -> str:
    agree = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
    return (f"predictions agree with the fake-quantised model's on {100 * agree:.2f}% of {len(reference)} test "
            f"examples (largest logit difference {float(np.max(np.abs(logits - reference))):.2g})")


def _weight_bytes(run) -> float:
    """The cost model's weight size of the run's configuration, in bytes."""
    from mpqjax.cost import model as cost_model

    table = run.model.table(run.fake_quantised.input_shape)
    counts = cost_model.layer_counts(table, np.asarray(run.widths, np.float32), exact=True)
    channel_bits = run.metadata.get("channel_bits", {})  # a channel-wise configuration: each kept channel's bits
    layer_bits = [np.mean([b for b in channel_bits[name] if b]) if name in channel_bits else bits
                  for name, bits in zip(table.names, run.bits, strict=True)]
    return float(np.sum(np.asarray(counts["weights"]) * np.asarray(layer_bits)) / 8.0)


def run_export(args) -> int:
    """Write the chosen format and print what was written and how it was checked."""
    from mpqjax.export.deployable import integer_program_of_run
    from mpqjax.store.run_folder import file_path

    if not os.path.isdir(args.run_dir):
        raise ValueError(f"run folder {args.run_dir!r} does not exist")
    out = args.out or file_path(args.run_dir, _DEFAULT_FILES[args.format])
    started = time.perf_counter()
    if args.format == "qwix":
        return _export_qwix(args.run_dir, out)
    program, run = integer_program_of_run(args.run_dir, raw_pixels=not args.float_input)
    reference = run.fake_quantised.predict(run.dataset.test.x)
    inputs = _test_inputs(program, run)
    if args.format == "onnx":
        from mpqjax.export.onnx import run_onnx, write_onnx

        constants = [layer.codes for layer in program.layers]
        write_onnx(out, lambda *arguments: program.run(list(arguments[:-1]), arguments[-1]), constants,
                   program.input_shape, input_dtype=program.input_dtype)
        print(f"wrote {out} ({os.path.getsize(out)} B) in {time.perf_counter() - started:.1f} s")
        print(_agreement(run_onnx(out, inputs), reference) + " (onnxruntime)")
        return 0
    from mpqjax.export import load_program, write_integer_model

    described = write_integer_model(out, program, layout=args.layout, metadata=run.metadata)
    print(f"{'layer':<24} {'bits':>4} {'kept weights':>12} {'payload':>9}")
    for layer in described["layers"]:
        print(f"{layer['name']:<24} {layer['bits']:>4} {layer['kept_weights']:>12} {layer['payload_bytes']:>7} B")
    print(f"weights {described['payload_bytes']} B packed ({args.layout}); the cost model's weight size is "
          f"{_weight_bytes(run):.0f} B")
    print(f"wrote {out} ({os.path.getsize(out)} B) in {time.perf_counter() - started:.1f} s; input: "
          f"{'raw 8-bit pixels' if program.input_dtype == np.uint8 else 'normalised float32'}")
    print(_agreement(load_program(out).predict(inputs), reference))
    return 0


def _export_qwix(run_dir: str, out: str) -> int:
    from mpqjax.export.deployable import run_model
    from mpqjax.export.qwix import qwix_rules_source
    from mpqjax.store.files import atomic_write_text

    run = run_model(run_dir)
    if run.metadata.get("channel_bits"):
        raise ValueError(f"{run_dir} holds a channel-wise configuration (a weight bit-width per output channel); "
                         f"Qwix rules give one bit-width per layer: export it --format integer or onnx")
    source = qwix_rules_source(run.model, run.bits, input_shape=run.fake_quantised.input_shape)
    atomic_write_text(out, source)
    print(f"wrote {out}: {len(run.bits)} Qwix rules")
    return 0
