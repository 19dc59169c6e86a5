"""The relaxed cost model: the cost of probabilities over choices, a differentiable function for gradient search.

Gradient-based searches (a DARTS-style search over per-layer bits and width multipliers, a PLiNIO-style joint
pruning and channel-wise precision search) hold probabilities over choices, not one configuration. `relaxed_cost`
costs them with the counting rules of `mpqjax.cost.model` and `mpqjax.cost.channels`, as a `jax.numpy` function of
the probabilities. Layer ``l``'s choices are given as:

- ``act_probs[l, a]``: the probability that its input activations take ``act_bits[a]`` bits;
- ``group_channels[l, a, p]``: the expected number of its output channels whose weights take ``weight_bits[p]``
  bits, given activations at ``act_bits[a]`` (pruned channels are not counted). `layer_choice_groups` builds both
  for the DARTS-style search, `channel_probs_groups` the channels for the PLiNIO-style one.

The cost is each layer's cost averaged over ``a`` with ``act_probs``, its weight groups as given, and its input
channels at their expectation: layer ``l`` consumes ``n[input_layer] * input_repeat`` channels, where
``n[l] = sum_a act_probs[l, a] * sum_p group_channels[l, a, p]``. This is a mean-field estimate, not the expectation
of the cost over configurations drawn from the probabilities (that would need the product of a layer's and its
producer's choices); it is what the searches descend. When the probabilities are one-hot, every average picks one
term (the others are multiplied by 0 exactly), so the value is the discrete cost: `mpqjax.cost.cost` of the chosen
bits and widths, or `mpqjax.cost.channel_cost` of the chosen channel bit-widths with the pruned channels removed.

The FPGA's cycle count rounds quotients up (row passes, invocations of the array). Here every ``ceil(a / b)`` is
straight-through: its value is the exact ceil (``ceil + (a / b - stop_gradient(a / b))`` adds an exact 0, and a
quotient that float32 rounded past an integer is stepped back), its gradient that of ``a / b``, so the latency and
the speed-up have a useful slope in the channel counts instead of a gradient that is 0 almost everywhere.
Bit-widths are options, not variables: they are rounded and clipped to [2, 16] as in `cost`.

Example:
    >>> from mpqjax.nn.table import LayerSpec, LayerTable
    >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4)),))
    >>> act_probs, groups = layer_choice_groups(table, [[0.0, 1.0]], [2, 4], [[1.0]], [1.0])
    >>> int(relaxed_cost(table, act_probs, [2, 4], groups, [2, 4], FPGATarget(rows=4, cols=8)).latency_cycles)
    22
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.cost.model import (
    Cost,
    array_cycles,
    baselines,
    cost_of_layers,
    cycles_and_energy,
    exact_ceil_div,
    layer_counts,
    products_per_dsp,
    table_arrays,
)
from mpqjax.cost.targets import FPGATarget, Target
from mpqjax.nn.config import MAX_BITS, MIN_BITS
from mpqjax.nn.table import LayerTable

__all__ = ["channel_probs_groups", "layer_choice_groups", "relaxed_cost"]


def _straight_through_ceil_div(numerator, denominator):
    """``ceil(numerator / denominator)`` in value, ``numerator / denominator`` in gradient."""
    quotient = numerator / denominator
    # quotient - stop_gradient(quotient) is exactly 0, so the value is the rounded count, not a rounded sum.
    return exact_ceil_div(numerator, denominator) + (quotient - jax.lax.stop_gradient(quotient))


def _options(bits):
    """Candidate bit-widths as float32, rounded and clipped as `cost` does (jitted code cannot raise)."""
    return jnp.clip(jnp.round(jnp.asarray(bits, jnp.float32)), MIN_BITS, MAX_BITS)


def relaxed_cost(table: LayerTable, act_probs, act_bits, group_channels, weight_bits, target: Target | None = None
                 ) -> Cost:
    """The cost of probabilities over bit-widths and channels of ``table`` on ``target``; jittable, differentiable.

    Args:
        table: the model's layer table (static).
        act_probs: ``(..., L, A)``, per layer the probability of each activation bit-width (rows sum to 1).
        act_bits: ``(A,)``, the candidate activation bit-widths.
        group_channels: ``(..., L, A, P)``, per layer the expected output channels at each weight bit-width given
            each activation bit-width (`layer_choice_groups`, `channel_probs_groups`).
        weight_bits: ``(P,)``, the candidate weight bit-widths.
        target: `FPGATarget` (default) or `GenericTarget`; its numbers may be traced.

    Returns:
        A `Cost` of float32 arrays (totals with the leading batch shape, per-layer fields with a last axis of L),
        differentiable with respect to ``act_probs`` and ``group_channels``.

    Raises:
        ValueError: arrays whose shapes do not match the table and each other.
        TypeError: an unsupported target.

    Example:
        >>> size = jax.grad(lambda p: relaxed_cost(table, p, bits, groups, bits).size_bytes)(probs)  # doctest: +SKIP
    """
    target = FPGATarget() if target is None else target
    act_probs = jnp.asarray(act_probs, jnp.float32)
    groups = jnp.asarray(group_channels, jnp.float32)
    act_bits, weight_bits = _options(act_bits), _options(weight_bits)
    if act_bits.ndim != 1 or weight_bits.ndim != 1:
        raise ValueError(f"act_bits {act_bits.shape} and weight_bits {weight_bits.shape} must be 1-D")
    expected = (len(table), len(act_bits), len(weight_bits))
    if act_probs.shape[-2:] != expected[:2] or groups.shape[-3:] != expected:
        raise ValueError(f"act_probs {act_probs.shape} and group_channels {groups.shape} must end in (L, A) and "
                         f"(L, A, P) = {expected} for {len(table)} layers, {len(act_bits)} activation and "
                         f"{len(weight_bits)} weight bit-widths")

    def average(per_choice):  # (..., L, A) -> (..., L): the layer's choices averaged
        return (act_probs * per_choice).sum(-1)

    arrays = table_arrays(table)
    produced_given = groups.sum(-1)
    produced = average(produced_given)
    input_layer = arrays["input_layer"]
    repeated = jnp.take(produced, np.maximum(input_layer, 0), axis=-1) * arrays["input_repeat"]
    consumed = jnp.where(input_layer >= 0, repeated, jnp.asarray(arrays["in_channels"], jnp.float32))
    kernel = jnp.asarray(arrays["kernel_h"] * arrays["kernel_w"], jnp.float32)
    pixels = jnp.asarray(arrays["out_h"] * arrays["out_w"], jnp.float32)
    in_pixels = jnp.asarray(arrays["out_h"] * arrays["stride_h"] * arrays["out_w"] * arrays["stride_w"], jnp.float32)
    patch = kernel * jnp.where(arrays["depthwise"], 1.0, consumed / arrays["groups"])
    weights = patch * produced

    # Per activation choice a (last axis): bits of all of the layer's weights, then the rules of channel_cost.
    weight_bits_given = patch[..., None] * (groups * weight_bits).sum(-1)
    aux = arrays["aux_per_channel"][:, None] * produced_given * target.bias_bits
    size_bits = average(weight_bits_given + aux)
    bops = pixels * average(act_bits * weight_bits_given)
    activations = (in_pixels * consumed)[..., None] + pixels[:, None] * produced_given
    bytes_moved = average(weight_bits_given + activations * act_bits) / 8.0

    def on_fpga():
        # Group p of choice a runs as a sub-layer packed at the wider of its weights and the activations.
        products = products_per_dsp(target, jnp.maximum(weight_bits, act_bits[:, None]))
        pixels_, patch_ = pixels[:, None, None], patch[..., None, None]
        cycles_given = array_cycles(target, pixels_, patch_, groups, products, ceil_div=_straight_through_ceil_div)
        return average(cycles_given.sum(-1)), average((pixels_ * patch_ * groups / products).sum(-1))

    cycles, energy_pj = cycles_and_energy(target, bops, bytes_moved, on_fpga)
    return cost_of_layers(size_bits, cycles, weights * pixels, bops, energy_pj, weights, baselines(table, target),
                          target.clock_hz)


def layer_choice_groups(table: LayerTable, bit_probs, bit_options, width_probs, width_options):
    """``(act_probs, group_channels)`` of per-layer choices: one bit-width for weights and activations, one width.

    For the DARTS-style search. Layer ``l``'s expected channels are ``n[l] = sum_w width_probs[l, w] * c_w[l]``,
    with ``c_w = layer_counts(table, every layer at width_options[w])["produced"]`` (so a fixed layer keeps its
    channels and a depthwise layer follows its producer), all at its one bit-width:
    ``group_channels[l, a, p] = n[l] * (a == p)``. Give the layers of one width group equal rows (a depthwise layer
    shares its producer's group in the zoo's tables).

    Args:
        table: the model's layer table (static).
        bit_probs: ``(..., L, B)``, per layer the probability of each of ``bit_options``.
        bit_options: ``(B,)``, the candidate bit-widths: pass them to `relaxed_cost` as both ``act_bits`` and
            ``weight_bits``.
        width_probs: ``(..., L, W)``, per layer the probability of each of ``width_options``.
        width_options: ``(W,)``, the candidate width multipliers.

    Returns:
        ``act_probs`` (``bit_probs`` as float32) and ``group_channels`` ``(..., L, B, B)``.

    Example:
        >>> bits = [2, 4, 8]
        >>> act_probs, groups = layer_choice_groups(table, bit_probs, bits, width_probs, [0.5, 1.0])  # doctest: +SKIP
        >>> relaxed_cost(table, act_probs, bits, groups, bits)  # doctest: +SKIP
    """
    bit_probs = jnp.asarray(bit_probs, jnp.float32)
    width_probs = jnp.asarray(width_probs, jnp.float32)
    width_options = jnp.asarray(width_options, jnp.float32)
    options = np.shape(bit_options)[-1:]
    if bit_probs.shape[-2:] != (len(table), *options) or width_probs.shape[-2:] != (len(table), *width_options.shape):
        raise ValueError(f"bit_probs {bit_probs.shape} and width_probs {width_probs.shape} must end in "
                         f"(L, B) and (L, W) for {len(table)} layers, bit options {options}, width options "
                         f"{width_options.shape}")
    # (W, L): every layer's channels at each width option (non-scalable and depthwise layers as layer_counts rules).
    per_width = layer_counts(table, jnp.broadcast_to(width_options[:, None], (*width_options.shape, len(table))))
    # Elementwise products and a sum, not a matmul: a dot may run at reduced precision on accelerators.
    produced = (width_probs * per_width["produced"].T).sum(-1)
    return bit_probs, produced[..., None, None] * jnp.eye(bit_probs.shape[-1], dtype=jnp.float32)


def channel_probs_groups(channel_probs: Sequence, num_act_bits: int):
    """``group_channels`` of per-channel choices: each output channel pruned or at one weight bit-width.

    For the PLiNIO-style search: layer ``l``'s expected channels at ``weight_bits[p]`` are the sum over its channels
    of their probability of ``p``, whatever the activations' bit-width. A layer that cannot be pruned (not scalable,
    or tied to others by a width group) should put no probability on "pruned"; a depthwise layer's channels should
    follow its producer's.

    Args:
        channel_probs: one array per layer, ``(..., C_l, 1 + P)``: per output channel the probability of being pruned
            (column 0) and of each weight bit-width (columns 1..P); ``C_l`` may differ between layers.
        num_act_bits: A, the number of candidate activation bit-widths.

    Returns:
        ``group_channels`` ``(..., L, A, P)`` (float32), equal over A.

    Raises:
        ValueError: layers with different numbers of options.

    Example:
        >>> probs = [jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])]
        >>> channel_probs_groups(probs, 2).tolist()
        [[[1.5, 0.5], [1.5, 0.5]]]
    """
    sums = [jnp.asarray(probs, jnp.float32)[..., 1:].sum(-2) for probs in channel_probs]
    for index, column_sums in enumerate(sums):
        if column_sums.shape[-1:] != sums[0].shape[-1:]:
            raise ValueError(f"layer {index}'s channel probabilities have {column_sums.shape[-1] + 1} options, "
                             f"layer 0's {sums[0].shape[-1] + 1}")
    stacked = jnp.stack(sums, axis=-2)
    return jnp.broadcast_to(stacked[..., None, :], (*stacked.shape[:-1], num_act_bits, stacked.shape[-1]))
