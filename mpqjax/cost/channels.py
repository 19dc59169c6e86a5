"""Channel-wise bit-widths: the cost of configurations whose weights have one bit-width per output channel.

A channel-wise configuration adds to ``bits[L]`` and ``widths[L]`` (`mpqjax.cost.model`) a sequence ``channel_bits``
of length L. Entry ``l`` is None (layer ``l``'s weights at ``bits[l]``, as in `cost`) or a 1-D array with the weight
bit-width of each output channel that layer ``l`` produces at ``widths`` (``layer_counts(...)["produced"][l]`` of
them), integers in [2, 8] (`mpqjax.nn.config.check_channel_bits`); pruning is the widths' business, not a zero
bit-width. ``bits[l]`` is always the bit-width of layer ``l``'s input activations.

Counting rules, on top of the model's:

- Size: output channel ``c`` stores its ``patch`` weights at ``channel_bits[l][c]`` bits; auxiliary parameters as in
  `cost`.
- BOPs: ``pixels * patch * channel_bits[l][c] * bits[l]`` summed over channels.
- FPGA: the deployment reorders a layer's channels by bit-width (as the joint-pruning method PLiNIO does), so the
  layer runs as one sub-layer per group of equal bit-width: the model's per-layer formula with the group's channel
  count, packed at the wider of the group's weights and the layer's activations (a DSP packs operands at one width).
  Energy counts each group's DSP operations, and the bytes of the weights at their own bit-widths and of the
  activations at ``bits[l]``.
- Generic target: latency ``BOPs / bops_per_cycle``, energy per BOP, as in `cost`.
- Baselines (FiP16, FP32): those of `cost`.

Channel-wise configurations are ragged and rare: `channel_cost` runs on the host in NumPy float64 (not jitted), one
configuration per call, and checks its input (a ``ValueError`` names the layer).

Example:
    >>> from mpqjax.cost.targets import FPGATarget
    >>> from mpqjax.nn.table import LayerSpec, LayerTable
    >>> table = LayerTable((LayerSpec("conv", "conv", 3, 4, kernel=(3, 3), out_hw=(4, 4)),))
    >>> result = channel_cost(table, [2], [1.0], [[2, 2, 4, 8]], FPGATarget(rows=4, cols=8))
    >>> float(result.size_bytes), float(result.layer_cycles[0])
    (54.0, 48.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpqjax.cost.model import Cost, array_cycles, cost_of_layers, cycles_and_energy, layer_counts, products_per_dsp
from mpqjax.cost.targets import FPGATarget, GenericTarget, Target
from mpqjax.nn.config import check_channel_bits, check_config
from mpqjax.nn.table import LayerTable

__all__ = ["channel_cost", "channel_groups"]


def channel_groups(channel_bits_row) -> list[tuple[int, int]]:
    """The groups of equal weight bit-width of one layer's channels, as the FPGA deployment runs them.

    Args:
        channel_bits_row: the weight bit-width of each output channel of a layer (integers; any order).

    Returns:
        ``[(bits, count), ...]``, one pair per bit-width present, narrowest first.

    Example:
        >>> channel_groups([4, 2, 4, 8, 2, 4])
        [(2, 2), (4, 3), (8, 1)]
    """
    values, counts = np.unique(np.asarray(channel_bits_row, np.int64), return_counts=True)
    return [(int(bits), int(count)) for bits, count in zip(values, counts, strict=True)]


def _weight_groups(table: LayerTable, bits: np.ndarray, produced: np.ndarray, channel_bits):
    """``(group_bits, group_channels)``, both (L, G): layer l's groups of equal weight bit-width, padded with empty
    groups (0 channels at the layer's bits, which cost nothing)."""
    if isinstance(channel_bits, (str, bytes)) or not isinstance(channel_bits, (Sequence, np.ndarray)):
        raise ValueError(f"channel_bits must be a sequence of one entry per layer, got {type(channel_bits).__name__}")
    if len(channel_bits) != len(table):
        raise ValueError(f"channel_bits has {len(channel_bits)} entries but the table has {len(table)} layers")
    rows = []
    for index, (name, row) in enumerate(zip(table.names, channel_bits, strict=True)):
        channels = int(produced[index])
        rows.append([(int(bits[index]), channels)] if row is None
                    else channel_groups(check_channel_bits(name, row, channels, " it produces at these widths")))
    width = max(len(groups) for groups in rows)
    group_bits = np.repeat(bits[:, None], width, axis=1).astype(np.float64)
    group_channels = np.zeros((len(table), width))
    for index, groups in enumerate(rows):
        for column, (weight_bits, count) in enumerate(groups):
            group_bits[index, column], group_channels[index, column] = weight_bits, count
    return group_bits, group_channels


def _layer_costs(counts, bits, group_bits, group_channels, target: Target, bias_bits):
    """Per-layer size in bits, cycles, MACs, BOPs and energy in picojoules (float64); activations at ``bits``."""
    weight_bits = counts["patch"] * (group_bits * group_channels).sum(-1)  # bits of all of a layer's weights
    size_bits = weight_bits + counts["aux"] * bias_bits
    bops = counts["pixels"] * weight_bits * bits
    bytes_moved = (weight_bits + counts["activations"] * bits) / 8.0

    def on_fpga():
        products = products_per_dsp(target, np.maximum(group_bits, bits[:, None]), np, np.float64)
        pixels, patch = counts["pixels"][:, None], counts["patch"][:, None]
        cycles = array_cycles(target, pixels, patch, group_channels, products, np).sum(-1)
        return cycles, (pixels * patch * group_channels / products).sum(-1)

    cycles, energy_pj = cycles_and_energy(target, bops, bytes_moved, on_fpga)
    return size_bits, cycles, counts["macs"], bops, energy_pj


def _uniform_costs(table: LayerTable, bits: float, target: Target):
    """Per-layer costs at width 1 with weights, activations and auxiliary parameters at ``bits`` (the baselines)."""
    counts = layer_counts(table, np.ones(len(table)), exact=True)
    every_layer = np.full(len(table), float(bits))
    return _layer_costs(counts, every_layer, every_layer[:, None], counts["produced"][:, None], target, bits)


def channel_cost(table: LayerTable, bits, widths, channel_bits, target: Target | None = None) -> Cost:
    """Size, latency, speed-up, BOPs and energy of one channel-wise configuration of ``table`` on ``target``.

    Args:
        table: the model's layer table.
        bits: per layer, the bit-width of its input activations and of its weights where ``channel_bits`` is None;
            integers in [2, 16] (a scalar applies to every layer).
        widths: width multiplier per layer (a scalar applies to every layer).
        channel_bits: one entry per layer: None, or the weight bit-width of each channel the layer produces at
            ``widths`` (integers in [2, `mpqjax.nn.config.MAX_CHANNEL_BITS`]).
        target: `FPGATarget` (default) or `GenericTarget`.

    Returns:
        A `Cost` of NumPy float64 values: totals as scalars, per-layer fields of shape ``(len(table),)``.

    Raises:
        ValueError: a bad configuration (`mpqjax.nn.config.check_config`), or ``channel_bits`` of the wrong length,
            or a layer's entry with the wrong channel count or a bit-width outside [2, 8].

    Example:
        >>> channel_cost(table, [8, 8], [0.5, 1.0], [[2, 2, 4, 8], None]).size_bytes  # doctest: +SKIP
    """
    target = FPGATarget() if target is None else target
    bits, widths = check_config(table, bits, widths)
    if bits.ndim != 1:
        raise ValueError(f"channel_cost costs one configuration: got bits and widths of shape {bits.shape}")
    bits = bits.astype(np.float64)
    counts = layer_counts(table, widths, exact=True)
    group_bits, group_channels = _weight_groups(table, bits, counts["produced"], channel_bits)
    size_bits, cycles, macs, bops, energy_pj = _layer_costs(
        counts, bits, group_bits, group_channels, target, target.bias_bits
    )

    fip16_size_bits, fip16_cycles, _, _, _ = _uniform_costs(table, 16, target)
    fp32_size_bits = _uniform_costs(table, 32, GenericTarget())[0]
    return cost_of_layers(size_bits, cycles, macs, bops, energy_pj, counts["weights"],
                          (fip16_size_bits, fip16_cycles, fp32_size_bits), target.clock_hz)
