"""The layer table: what the cost model, the sensitivity analysis and the search know about a model.

A `LayerTable` lists a model's weight layers (convolutions, depthwise convolutions, dense layers) in the paper's
order (stem first, classifier head last) with the base shapes at width multiplier 1. A configuration is two arrays
of length ``len(table)``: ``bits[l]`` and ``widths[l]``. Layer ``l`` produces
``scale_channels(out_channels, widths[l])`` channels (``out_channels`` when it is not ``scalable``) and consumes the
channels produced by layer ``input_layer`` (the model input when ``input_layer == -1``). Layers with the same
``width_group`` must share one width multiplier (residual stages, depthwise convolutions tied to their producer).

The table is derived from the model itself by the model zoo (`mpqjax.nn.models`); this module only holds the data.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["LAYER_KINDS", "LayerSpec", "LayerTable", "scale_channels"]

LAYER_KINDS = ("conv", "depthwise", "dense")


def scale_channels(channels, multiplier):
    """Channel count of a layer of ``channels`` base channels at width ``multiplier``: floor(c * m + 0.5).

    Python numbers give an ``int``; NumPy or JAX arrays give an array of the same library (halves round up, unlike
    Python's ``round``, so every backend agrees).

    Example:
        >>> scale_channels(16, 0.875), scale_channels(16, 1.125)
        (14, 18)
    """
    if isinstance(channels, numbers.Real) and isinstance(multiplier, numbers.Real):
        return int(math.floor(channels * multiplier + 0.5))
    return (channels * multiplier + 0.5) // 1


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One weight layer at width multiplier 1.

    Attributes:
        name: the layer's path in the model's parameters, joined with '/' (e.g. ``"stage1/block0/conv1"``).
        kind: ``"conv"``, ``"depthwise"`` or ``"dense"``.
        in_channels: input channels (input features for dense layers).
        out_channels: output channels (output features for dense layers).
        kernel: (height, width) of the kernel; (1, 1) for dense layers.
        stride: (height, width) stride; (1, 1) for dense layers.
        out_hw: (height, width) of the output feature map; (1, 1) for dense layers.
        input_layer: index of the layer whose output this layer consumes, -1 for the model input.
        width_group: layers with the same group share a width multiplier.
        scalable: whether a width multiplier changes this layer's output channels (False for a classifier head).
        use_bias: whether the layer has a bias vector.
        batch_norm: whether a batch-norm (scale and offset per output channel) follows the layer.
        groups: a convolution's feature groups (each output channel sees ``in_channels / groups`` inputs); 1 for
            regular convolutions and dense layers; a depthwise layer's is its channel count.
        weight: the path of the layer's weight in the parameters ('/'-joined); ``name + "/kernel"`` when empty.
        input_repeat: how many times ``input_layer``'s channels repeat in this layer's input (a dense layer after
            flattening a feature map reads them at every position); 1 otherwise.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    input_layer: int = -1
    width_group: int = 0
    scalable: bool = True
    use_bias: bool = False
    batch_norm: bool = False
    groups: int = 1
    weight: str = ""
    input_repeat: int = 1

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name!r}: kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"layer {self.name!r}: channel counts must be positive")
        if self.kind == "depthwise" and self.in_channels != self.out_channels:
            raise ValueError(f"layer {self.name!r}: a depthwise layer has as many outputs as inputs")
        uneven = self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups
        if self.kind == "conv" and uneven:
            raise ValueError(f"layer {self.name!r}: {self.groups} groups do not divide its channels")

    @property
    def weight_path(self) -> str:
        """Where the layer's weight is in the parameters."""
        return self.weight or f"{self.name}/kernel"

    @property
    def weights(self) -> int:
        """Number of weights (kernel entries, biases and batch-norm parameters excluded)."""
        kh, kw = self.kernel
        if self.kind == "depthwise":
            return kh * kw * self.out_channels
        return kh * kw * (self.in_channels // self.groups) * self.out_channels

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one input example."""
        return self.weights * self.out_hw[0] * self.out_hw[1]


@dataclasses.dataclass(frozen=True)
class LayerTable(Sequence):
    """A model's weight layers in order, with the input shape they were derived for.

    Behaves as a sequence of `LayerSpec`; `arrays()` gives the per-layer fields as NumPy arrays for vectorised
    cost arithmetic.
    """

    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, ...] = ()
    model: str = ""

    def __post_init__(self):
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError("layer names in a table must be unique")
        for index, layer in enumerate(self.layers):
            if not -1 <= layer.input_layer < index:
                raise ValueError(f"layer {layer.name!r}: input_layer must be -1 or an earlier layer's index")

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def __iter__(self) -> Iterator[LayerSpec]:
        return iter(self.layers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def total_weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def width_groups(self) -> list[list[int]]:
        """Indices of the layers in each width group, in order of first appearance."""
        groups: dict[int, list[int]] = {}
        for index, layer in enumerate(self.layers):
            groups.setdefault(layer.width_group, []).append(index)
        return list(groups.values())

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-layer fields as arrays of length ``len(self)`` (kernel, stride, out_hw split into h and w)."""
        fields = {
            "in_channels": [layer.in_channels for layer in self.layers],
            "out_channels": [layer.out_channels for layer in self.layers],
            "kernel_h": [layer.kernel[0] for layer in self.layers],
            "kernel_w": [layer.kernel[1] for layer in self.layers],
            "stride_h": [layer.stride[0] for layer in self.layers],
            "stride_w": [layer.stride[1] for layer in self.layers],
            "out_h": [layer.out_hw[0] for layer in self.layers],
            "out_w": [layer.out_hw[1] for layer in self.layers],
            "input_layer": [layer.input_layer for layer in self.layers],
            "width_group": [layer.width_group for layer in self.layers],
            "scalable": [layer.scalable for layer in self.layers],
            "depthwise": [layer.kind == "depthwise" for layer in self.layers],
            "use_bias": [layer.use_bias for layer in self.layers],
            "batch_norm": [layer.batch_norm for layer in self.layers],
            "groups": [layer.groups if layer.kind == "conv" else 1 for layer in self.layers],
            "input_repeat": [layer.input_repeat for layer in self.layers],
        }
        return {key: np.asarray(value) for key, value in fields.items()}
