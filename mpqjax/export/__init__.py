"""Export of a quantised model at one configuration: self-contained files, integer-only inference, other formats.

Modules:

- `program`: the ``mpqjax-program/1`` file: any model's forward pass as serialised JAX with its arrays
  (`export_program`), and `load_program`, which runs it without the model's code;
- `lowering`: the model's forward pass rewritten in integer arithmetic (`lower`: int8 codes, int32 accumulation,
  dyadic requantisation, batch norm folded), on top of `fixed_point` (dyadic multipliers and exponents);
- `bitpack`: weight codes packed at their bit-width, as a bitstream or as a packed-DSP memory image;
- `deployable`: the integer program with bit-packed weights as one program file (`write_integer_model`), and the
  way from a search folder to it (`integer_program_of_run`);
- `onnx`: an integer program as an ONNX model for onnxruntime (the ``onnx`` extra), built with its private
  `_onnx_graph` (the graph builder and onnxruntime's dtype workarounds) and `_onnx_primitives` (one converter per
  primitive);
- `qwix`: the configuration as Qwix rules (the ``qwix`` extra);
- `archive` (reading an mpqjax file: entries, config, format) and `integer` (integer codes of weights and
  activations in NumPy, and the float kernels they come back as).

Example:
    >>> forward = lambda variables, x: model.apply(variables, x, bits, widths)
    >>> export_program("best.npz", forward, variables, input_shape=(8, 8, 1), metadata={"bits": [8, 4, 3, 8]})
    >>> program = load_program("best.npz")  # in any process, without the model's code
    >>> program(images).argmax(-1)
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["archive", "bitpack", "deployable", "fixed_point", "integer", "lowering", "onnx", "program", "qwix"],
    names={
        "one_line": "archive", "read_archive": "archive",
        **{name: "integer" for name in ("MAX_EXPORT_BITS", "activation_scale", "dequantize", "integer_activations",
                                        "integer_weights", "requantisable_kernel", "weight_dtype")},
        **{name: "deployable" for name in ("INTEGER_FORMAT", "RunModel", "describe", "integer_program_of_run",
                                           "run_model", "write_integer_model")},
        **{name: "lowering" for name in ("IntegerLayer", "IntegerProgram", "LoweringError", "lower")},
        **{name: "onnx" for name in ("run_onnx", "to_onnx", "write_onnx")},
        **{name: "qwix" for name in ("QWIX_BITS", "UNSUPPORTED_MODES", "qwix_rules", "qwix_rules_source")},
        **{name: "bitpack" for name in ("LAYOUTS", "MAX_PACKED_BITS", "pack", "packed_bytes", "unpack", "unpack_jax")},
        **{name: "fixed_point" for name in ("HEADROOM_BITS", "MAX_EXPONENT", "dyadic", "exponent_for", "rescale",
                                            "shift_exponent")},
        **{name: "program" for name in ("LOWERING_PLATFORMS", "PROGRAM_FORMAT", "Program", "export_program",
                                        "load_program")},
    },
)
