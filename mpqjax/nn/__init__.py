"""Quantised networks: fake quantisation with traced bit-widths, quantised layers, layer tables and the zoo.

A user's own linen or NNX model goes through `mpqjax.nn.models.wrap`: `graph` finds its layers in its trace (with
`spaces`: how channel axes flow through each operation) and `intercept` runs the trace with them quantised;
`jaxprs` holds what both read in a trace.

`mpqjax.nn.config` is the one validation of a user's bit-widths and widths (`check_config`, `check_bits`).
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["config", "graph", "intercept", "jaxprs", "layers", "models", "quant", "spaces", "table"],
    names={
        "MAX_BITS": "config", "MIN_BITS": "config", "check_bits": "config", "check_config": "config",
        **{name: "table" for name in ("LAYER_KINDS", "LayerSpec", "LayerTable", "scale_channels")},
        **{name: "graph" for name in ("Discovery", "FoundLayer", "discover")},
        **{name: "jaxprs" for name in ("CALL_PRIMITIVES", "bodies", "contracts", "input_kinds", "layer_operands",
                                       "sub_jaxpr")},
        **{name: "spaces" for name in ("ELEMENTWISE", "SpaceRules", "Spaces")},
        **{name: "intercept" for name in ("Plan", "along", "mask_of", "quantized_call")},
        **{name: "layers" for name in ("DEFAULT_ACT_CLIP", "QConv", "QDense", "channel_mask")},
        **{name: "quant" for name in (
            "CALIBRATION_METHODS", "CLIPPING_MODES", "FLOAT_BITS", "PASS_THROUGH_BITS", "calibration_stats",
            "is_pass_through", "quantize_activations", "quantize_weights", "round_ste", "signed_levels",
            "unsigned_levels")},
    },
)
