"""Quantised networks: fake quantisation with traced bit-widths, quantised layers, layer tables and the zoo."""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["layers", "models", "quant", "table"],
    names={"LayerSpec": "table", "LayerTable": "table", "QConv": "layers", "QDense": "layers"},
)
