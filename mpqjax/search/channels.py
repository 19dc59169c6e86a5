"""Channel-wise configurations: a weight bit-width per output channel, 0 to prune the channel.

A channel-wise configuration (``channel_bits``: ``{layer: one bit-width per output channel at width 1}``) reaches
the cost model and the quantised model in their own terms: `channel_layout` checks it and turns its pruning into
widths and channel ranks (a pruned channel is switched off as a narrower width switches channels off), and
`weight_bits_of` gives the per-channel bit-widths the quantised model holds
(`mpqjax.nn.models.Model.with_weight_bits`). ``bits[l]`` stays the bit-width of layer ``l``'s input activations.

Example:
    >>> layout = channel_layout(table, {"conv1": [4] * 30 + [0, 0]})
    >>> layout.widths[0], layout.kept_bits["conv1"][:3]
    (0.9375, [4, 4, 4])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from mpqjax.nn import models

__all__ = ["ChannelLayout", "channel_layout", "weight_bits_of"]


class ChannelLayout(NamedTuple):
    """A channel-wise configuration as the cost model and the quantised model take it (`channel_layout`)."""

    widths: np.ndarray  # per layer: kept channels / channels (1 where nothing is pruned)
    kept_bits: dict  # {layer: the bit-widths of its kept channels, in order}
    ranks: dict  # {pruned layer: channel ranks, the kept channels first (`mpqjax.nn.intercept.mask_of`)}


def channel_layout(table: models.LayerTable, channel_bits: Mapping[str, Sequence[int]]) -> ChannelLayout:
    """Check a channel-wise configuration and say how it prunes: ``channel_bits[layer][c]`` is output channel
    ``c``'s weight bit-width (2 to 8) at width 1, or 0 to prune the channel.

    A pruned channel is switched off as a narrower width switches channels off (its output is zero wherever it is
    read, its bias and batch norm included): the layer's width becomes its kept fraction, and its channel ranks put
    the kept channels first. So only a layer whose channels are its own can prune: scalable, alone in its width group
    (a channel of a residual stream is the sum of several layers' outputs).

    Raises:
        ValueError: an unknown layer, a row of the wrong length, a bit-width not 0 or 2 to 8, a pruned channel in a
            layer that cannot prune, every channel of a layer pruned.
    """
    groups = {index: len(group) for group in table.width_groups() for index in group}
    unknown = sorted(set(channel_bits) - set(table.names))
    if unknown:
        raise ValueError(f"channel_bits names unknown layers {unknown}")
    widths, kept_bits, ranks = np.ones(len(table), np.float32), {}, {}
    for index, layer in enumerate(table):
        if layer.name not in channel_bits:
            continue
        row = np.asarray(channel_bits[layer.name])
        if row.shape != (layer.out_channels,) or not np.all((row == 0) | ((row >= 2) & (row <= 8))) \
                or not np.all(row == np.round(row)):
            raise ValueError(f"channel_bits of layer {layer.name!r} must be {layer.out_channels} bit-widths, each 0 "
                             f"(pruned) or 2 to 8, got {row.tolist()}")
        kept = np.flatnonzero(row)
        if len(kept) == 0:
            raise ValueError(f"channel_bits prunes every channel of layer {layer.name!r}")
        if len(kept) < len(row):
            if not layer.scalable or groups[index] > 1:
                raise ValueError(f"layer {layer.name!r} cannot prune a channel: its channels are shared with other "
                                 f"layers (a width group) or fixed")
            widths[index] = len(kept) / len(row)
            pruned = np.flatnonzero(row == 0)
            rank = np.empty(len(row), np.int32)
            rank[kept], rank[pruned] = np.arange(len(kept)), np.arange(len(kept), len(row))
            ranks[layer.name] = rank
        kept_bits[layer.name] = [int(b) for b in row[kept]]
    return ChannelLayout(widths, kept_bits, ranks)


def weight_bits_of(quant_model: models.Model, channel_bits: Mapping[str, Sequence[int]], bits,
                   input_shape: Sequence[int]) -> dict[str, list[int]]:
    """A channel-wise configuration's per-channel weight bit-widths as the quantised model holds them
    (`mpqjax.nn.models.Model.with_weight_bits`).

    ``channel_bits`` gives, per layer, one bit-width per channel at width 1 (0: pruned); a model that grows holds
    more channels (its first ones are those of width 1): the others, and the pruned ones, switched off, take the
    layer's ``bits``.
    """
    held = quant_model.weight_channels(input_shape)
    index = {name: i for i, name in enumerate(models.layer_table(quant_model, input_shape=input_shape).names)}
    padded = {}
    for name, row in channel_bits.items():
        fill = int(min(max(bits[index[name]], 2), 8))
        padded[name] = [int(b) if b > 0 else fill for b in row] + [fill] * max(held[name] - len(row), 0)
    return padded
