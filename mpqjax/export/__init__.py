"""Export of a quantised model at one configuration as one self-contained ``.npz`` file, and loading it back.

Modules: `program` (the ``mpqjax-program/1`` file: any model's forward pass as serialised JAX with its arrays,
`export_program` and `load_program`, which runs without the model's code), `archive` (reading an mpqjax file:
entries, config, format) and `integer` (integer codes of weights and activations, in NumPy, and the float kernels
they come back as).

Example:
    >>> forward = lambda variables, x: model.apply(variables, x, bits, widths)
    >>> export_program("best.npz", forward, variables, input_shape=(8, 8, 1), metadata={"bits": [8, 4, 3, 8]})
    >>> program = load_program("best.npz")  # in any process, without the model's code
    >>> program(images).argmax(-1)
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["archive", "integer", "program"],
    names={
        "one_line": "archive", "read_archive": "archive",
        **{name: "integer" for name in ("MAX_EXPORT_BITS", "activation_scale", "dequantize", "integer_activations",
                                        "integer_weights", "requantisable_kernel", "weight_dtype")},
        **{name: "program" for name in ("LOWERING_PLATFORMS", "PROGRAM_FORMAT", "Program", "export_program",
                                        "load_program")},
    },
)
