"""Quantised networks: fake quantisation with traced bit-widths, quantised layers, layer tables and the zoo.

`mpqjax.nn.config` is the one validation of a user's bit-widths and widths (`check_config`, `check_bits`).
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["config", "layers", "models", "quant", "table"],
    names={
        "MAX_BITS": "config", "MIN_BITS": "config", "check_bits": "config", "check_config": "config",
        "LayerSpec": "table", "LayerTable": "table", "QConv": "layers", "QDense": "layers",
    },
)
