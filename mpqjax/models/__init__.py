"""The model zoo: quantised Flax models by name, and the layer table each one derives from itself."""

from mpqjax.models.table import LayerSpec, LayerTable, scale_channels

__all__ = ["LayerSpec", "LayerTable", "scale_channels"]
