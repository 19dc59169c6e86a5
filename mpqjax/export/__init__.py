"""Export of a quantised model at one configuration as one framework-neutral ``.npz`` file, and loading it back.

Modules: `archive` (reading either file kind: entries, config, format), `integer` (integer codes of weights and
activations, in NumPy, and the float kernels they come back as),
`model_file` (the ``mpqjax-export/1`` file: its format, `export_model` and `load_model`) and `program` (the
``mpqjax-program/1`` file: any model's forward pass as serialised JAX with its arrays, `export_program` and
`load_program`, which runs without the model's code).

Example:
    >>> export_model("best.npz", model_name="digits_cnn", model_kwargs={}, variables=variables,
    ...              bits=[8, 4, 3, 8], widths=[0.75, 1.25, 1.0, 1.0], input_shape=(8, 8, 1), num_classes=10)
    >>> loaded = load_model("best.npz")
    >>> train.evaluate(loaded.model, loaded.variables, data.test, bits=loaded.bits)
    0.97...
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["archive", "integer", "model_file", "program"],
    names={
        "one_line": "archive", "read_archive": "archive",
        **{name: "integer" for name in ("MAX_EXPORT_BITS", "activation_scale", "dequantize", "integer_activations",
                                        "integer_weights", "requantisable_kernel", "weight_dtype")},
        **{name: "model_file" for name in ("BATCH_NORM_EPSILON", "CONFIG_ENTRY", "FORMAT_VERSION", "Exported",
                                           "export_model", "load_model")},
        **{name: "program" for name in ("LOWERING_PLATFORMS", "PROGRAM_FORMAT", "Program", "export_program",
                                        "load_program")},
    },
)
