"""The one validation of a configuration: per-layer bit-widths and width multipliers checked against a layer table.

A configuration of a model is two arrays over its layer table (`mpqjax.nn.table.LayerTable`): ``bits[l]`` (weights
and input activations of layer ``l`` share one bit-width) and ``widths[l]`` (width multiplier). User-given bit-widths
are integers in [`MIN_BITS`, `MAX_BITS`]; `MAX_BITS` (16) means "not quantised", the FiP16 reference the cost model
compares against. Everything that takes a configuration from a user (training, export, the cost report, the command
line) checks it here, before any jitted code runs: jitted code cannot raise on traced values.

Internal float paths may pass `mpqjax.nn.quant.FLOAT_BITS` (32) to the layers directly; it is never a user's value.

This module needs NumPy only (no Flax, no JAX), so the cost model can use it.

Example:
    >>> from mpqjax.nn.table import LayerSpec, LayerTable
    >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8), LayerSpec("head", "dense", 8, 10, input_layer=0)))
    >>> bits, widths = check_config(table, [8, 4], 1.0)
    >>> bits.tolist(), widths.tolist()
    ([8, 4], [1.0, 1.0])
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from mpqjax.nn.table import LayerTable, scale_channels

__all__ = ["MAX_BITS", "MAX_CHANNEL_BITS", "MIN_BITS", "check_bits", "check_channel_bits", "check_config"]

MIN_BITS = 2
MAX_BITS = 16
# The widest weight bit-width of one output channel: channel-wise configurations hold int8 codes.
MAX_CHANNEL_BITS = 8


def _valid_bits(values):
    values = np.asarray(values, np.float64)
    return np.isfinite(values) & (values == np.round(values)) & (values >= MIN_BITS) & (values <= MAX_BITS)


def _is_number(value) -> bool:
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _show(value) -> str:
    return f"{float(value):g}" if _is_number(value) else repr(value)


def _bits_error(label: str, value) -> ValueError:
    return ValueError(f"{label}: bit-width must be an integer in [{MIN_BITS}, {MAX_BITS}] ({MAX_BITS}: not "
                      f"quantised), got {_show(value)}")


def check_bits(values, names: str | Sequence[str]) -> np.ndarray:
    """Check bit-widths that are named rather than placed in a layer table; returns them as int32.

    Every value must be a number (not a bool or a string) that is an integer in [`MIN_BITS`, `MAX_BITS`].

    Args:
        values: a bit-width or an array-like of them (any shape).
        names: one name for all the values (a setting, e.g. ``"baseline_bits"``: messages read
            ``"baseline_bits: ..."``) or one layer name per value (messages read ``"layer 'conv2': ..."``).

    Returns:
        The bit-widths as an int32 array of the shape of ``values``.

    Raises:
        ValueError: naming the first bad value, or a count of names that differs from the count of values.

    Example:
        >>> check_bits([8, 6, 4], "bits").tolist()
        [8, 6, 4]
        >>> check_bits([8, 1], ["conv1", "conv2"])
        Traceback (most recent call last):
        ValueError: layer 'conv2': bit-width must be an integer in [2, 16] (16: not quantised), got 1
    """
    array = np.asarray(values, dtype=object)
    flat = array.reshape(-1)
    if isinstance(names, str):
        labels = [names] * flat.size
    else:
        labels = [f"layer {name!r}" for name in names]
        if len(labels) != flat.size:
            raise ValueError(f"got {flat.size} bit-widths for {len(labels)} layer names")
    for label, value in zip(labels, flat, strict=True):
        if not _is_number(value) or not _valid_bits(float(value)):
            raise _bits_error(label, value)
    return np.asarray([int(value) for value in flat], np.int32).reshape(array.shape)


def check_channel_bits(layer: str, row, channels: int, where: str = "") -> np.ndarray:
    """One layer's weight bit-widths per output channel, checked: ``channels`` whole numbers in [`MIN_BITS`,
    `MAX_CHANNEL_BITS`] (a channel-wise configuration; the cost model and the quantised model share this check).

    Args:
        layer: the layer's name, for the message.
        row: the bit-widths, one per output channel.
        channels: how many the layer has.
        where: what ``channels`` counts, appended to the message (e.g. ``" it produces at these widths"``).

    Returns:
        int64 array of shape ``(channels,)``.

    Raises:
        ValueError: naming the layer (and the channel): not a 1-D array of numbers, the wrong count, a bit-width
            outside the range or not whole.
    """
    try:
        array = np.asarray(row)
    except (TypeError, ValueError):  # ragged nesting
        array = np.asarray(None)
    if array.ndim != 1 or array.dtype.kind not in "iuf":  # bools and objects are not bit-widths
        raise ValueError(f"layer {layer!r}: channel bits must be a 1-D array of numbers, got {row!r}")
    if array.size != channels:
        raise ValueError(f"layer {layer!r}: got {array.size} channel bit-widths for the {channels} channels{where}")
    valid = np.isfinite(array) & (array == np.round(array)) & (array >= MIN_BITS) & (array <= MAX_CHANNEL_BITS)
    if not valid.all():
        channel = int(np.argmin(valid))
        raise ValueError(f"layer {layer!r}: channel {channel}'s bit-width must be an integer in [{MIN_BITS}, "
                         f"{MAX_CHANNEL_BITS}], got {float(array[channel]):g}")
    return array.astype(np.int64)


def _per_layer(table: LayerTable, values, label: str) -> np.ndarray:
    """``values`` as a float64 array ``(..., len(table))``: a scalar is repeated for every layer."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be numbers, got {values!r}") from None
    if array.ndim == 0:
        array = np.full((len(table),), float(array))
    if array.shape[-1] != len(table):
        owner = f"model {table.model!r}" if table.model else "the table"
        raise ValueError(f"{label} has {array.shape[-1]} entries but {owner} has {len(table)} weight layers")
    return array


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True entry (configurations in order, then layers)."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_widths(table: LayerTable, widths: np.ndarray, max_width: float | None, fixed_at_one: bool) -> None:
    names = table.names
    bad = ~np.isfinite(widths) | (widths <= 0)
    if bad.any():
        index = _first(bad)
        raise ValueError(f"layer {names[index[-1]]!r}: width multiplier must be finite and > 0, "
                         f"got {widths[index]:g}")
    arrays = table.arrays()
    if fixed_at_one:
        bad = ~arrays["scalable"] & (widths != 1.0)
        if bad.any():
            index = _first(bad)
            raise ValueError(f"layer {names[index[-1]]!r}: its output channels are fixed by the graph (they reach "
                             f"the model's input or output, or an operation other than a layer mixes them), so its "
                             f"width multiplier must be 1, got {widths[index]:g}")
    base = arrays["out_channels"]
    channels = scale_channels(base, widths)
    bad = arrays["scalable"] & (channels < 1)
    if bad.any():
        index = _first(bad)
        raise ValueError(f"layer {names[index[-1]]!r}: width multiplier {widths[index]:g} leaves "
                         f"{base[index[-1]]} channels at zero")
    if max_width is not None:
        bad = arrays["scalable"] & (channels > scale_channels(base, float(max_width)))
        if bad.any():
            index = _first(bad)
            raise ValueError(f"layer {names[index[-1]]!r}: width multiplier {widths[index]:g} exceeds max_width "
                             f"{max_width:g}")
    # Equal as float32, the precision the models and the cost model compute widths in.
    single = widths.astype(np.float32)
    for group in table.width_groups():
        differ = single[..., group] != single[..., group[:1]]
        if differ.any():
            index = _first(differ)
            first, layer = index[:-1] + (group[0],), index[:-1] + (group[index[-1]],)
            raise ValueError(f"layer {names[layer[-1]]!r} must share the width multiplier of layer "
                             f"{names[group[0]]!r} ({widths[first]:g}), got {widths[layer]:g}")


def check_config(table: LayerTable, bits, widths, *, max_width: float | None = None, strict_fixed: bool = False
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Check a configuration (or a batch of them) of ``table`` and return it as arrays; not jittable.

    Checks, in order: numbers, one entry per layer on the last axis, bit-widths that are integers in
    [`MIN_BITS`, `MAX_BITS`], width multipliers that are finite and > 0, that leave every scalable layer at least
    one channel and (when ``max_width`` is given) no more channels than ``max_width`` gives it, and that are equal
    inside each width group (`LayerTable.width_groups`).

    Args:
        table: the model's layer table.
        bits: bit-width per layer, shape ``(..., len(table))``, or a scalar for every layer; None skips it.
        widths: width multiplier per layer, shape ``(..., len(table))``, or a scalar; None skips it.
        max_width: the largest width multiplier the model can hold (a masked model's ``max_width``); None: no limit.
        strict_fixed: widths given per layer must be 1 on the layers that are not ``scalable`` (a user's model,
            whose fixed layers the graph decides); False ignores their widths (the zoo's convention).

    Returns:
        ``(bits, widths)`` as int32 and float32 NumPy arrays, broadcast to one shape ``(..., len(table))`` when both
        are given; None for a half given as None.

    Raises:
        ValueError: naming the first problem found and the layer it concerns.

    Example:
        >>> from mpqjax.nn.table import LayerSpec, LayerTable
        >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8), LayerSpec("head", "dense", 8, 10, input_layer=0)))
        >>> check_config(table, [8, 17], 1.0)
        Traceback (most recent call last):
        ValueError: layer 'head': bit-width must be an integer in [2, 16] (16: not quantised), got 17
    """
    bits_array = None if bits is None else _per_layer(table, bits, "bits")
    widths_array = None if widths is None else _per_layer(table, widths, "widths")
    if bits_array is not None and widths_array is not None:
        try:
            bits_array, widths_array = np.broadcast_arrays(bits_array, widths_array)
        except ValueError:
            raise ValueError(f"bits of shape {bits_array.shape} and widths of shape {widths_array.shape} do not "
                             "broadcast to one shape") from None
    if bits_array is not None:
        bad = ~_valid_bits(bits_array)
        if bad.any():
            index = _first(bad)
            raise _bits_error(f"layer {table.names[index[-1]]!r}", bits_array[index])
        bits_array = bits_array.astype(np.int32)
    if widths_array is not None:
        _check_widths(table, widths_array, max_width, strict_fixed and np.ndim(widths) > 0)
        widths_array = widths_array.astype(np.float32)
    return bits_array, widths_array
