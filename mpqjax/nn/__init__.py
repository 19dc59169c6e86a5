"""Quantised networks: fake quantisation with traced bit-widths, layer tables, the interceptor and the zoo.

Every model, the zoo's and a user's linen or NNX model alike, goes through `mpqjax.nn.models.wrap`: `graph` finds
its layers in its trace (with `spaces`: how channel axes flow through each operation) and `intercept` runs the trace
with them quantised; `jaxprs` holds what both read in a trace.

`mpqjax.nn.config` is the one validation of a user's bit-widths and widths (`check_config`, `check_bits`,
`check_channel_bits`).
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["config", "graph", "intercept", "jaxprs", "models", "quant", "spaces", "table"],
    names={
        "MAX_BITS": "config", "MAX_CHANNEL_BITS": "config", "MIN_BITS": "config", "check_bits": "config",
        "check_channel_bits": "config", "check_config": "config",
        **{name: "table" for name in ("LAYER_KINDS", "LayerSpec", "LayerTable", "scale_channels")},
        **{name: "graph" for name in ("Discovery", "discover")},
        **{name: "jaxprs" for name in ("CALL_PRIMITIVES", "COMPOSING", "FoundLayer", "bodies", "composes", "contracts",
                                       "describe_layer", "input_kinds", "layer_operands", "sub_jaxpr")},
        **{name: "spaces" for name in ("ELEMENTWISE", "SpaceRules", "Spaces")},
        **{name: "intercept" for name in ("Plan", "Relaxation", "along", "mask_of", "quantized_call")},
        **{name: "quant" for name in (
            "CALIBRATION_METHODS", "CLIPPING_MODES", "DEFAULT_ACT_CLIP", "FLOAT_BITS", "PASS_THROUGH_BITS",
            "PRECISIONS", "calibration_stats",
            "is_pass_through", "mixed_activations", "mixed_weights", "quantize_activations", "quantize_weights",
            "round_ste", "signed_levels", "unsigned_levels")},
    },
)
