"""The cost model: size, latency, speed-up, bit-operations and energy of configurations on a target.

A configuration of a model is two arrays over its layer table (`mpqjax.nn.table.LayerTable`): ``bits[l]`` (weights
and input activations of layer ``l`` share one bit-width, as in the paper) and ``widths[l]`` (width multiplier).
Every cost is a pure `jax.numpy` function of ``(table, bits, widths, target)``: it runs under `jax.jit`, and a batch
of configurations (arrays of shape ``(..., len(table))``, or `jax.vmap`) costs one call. The table is static (a
Python object, hashable, so it may be a static argument of `jax.jit`); the target (`mpqjax.cost.targets`) is a
PyTree whose numbers are traced, so changing them does not recompile. Its speed and its FiP16 sizes against the
paper are measured in docs/results.md (section "Cost model").

Counting rules (the same for every target):

- Channels follow the table's width semantics: layer ``l`` produces ``scale_channels(out_channels, widths[l])``
  channels (its base ``out_channels`` if not ``scalable``) and consumes what its ``input_layer`` produces (base
  ``in_channels`` for the model input; times ``input_repeat`` after flattening). A depthwise layer produces as many
  channels as it consumes.
- Weights: ``kh*kw*Cin'*Cout'/groups`` (conv, dense), ``kh*kw*Cout'`` (depthwise), stored at the layer's bit-width; the
  paper's memory packing makes size linear in the bit-width (3-bit weights cost 3 bits).
- Auxiliary parameters: a bias (``Cout'`` values) when ``use_bias`` and a batch-norm scale and offset (``2*Cout'``,
  running statistics folded in) when ``batch_norm``, stored at the target's ``bias_bits`` (16 by default).
- Baselines: FiP16 is the same model at width 1 with weights, activations and auxiliary parameters at 16 bits, run
  on the same target (16-bit operands: 1 multiplication per DSP); FP32 (size only) stores everything at 32 bits.
  Sizes are in bytes; "MB" in the paper is 10**6 bytes.
- Bit-operations (BOPs): ``MACs * bits * bits`` per layer (weights and activations share the bit-width).
- Bytes moved (for energy): each layer reads its weights and its input feature map (``out_h*stride_h`` by
  ``out_w*stride_w`` by ``Cin'``) and writes its output feature map, activations at the layer's bit-width.

The paper's FPGA (`FPGATarget`, Section III.C): an M x N systolic array of processing elements with one DSP each
(27x18 multiplier, 48-bit accumulator). A layer's ``k*k*Cin'`` input patch (``k*k`` for depthwise) is streamed N
entries per row pass, ``ceil(patch / N)`` passes per output pixel; M output channels are computed per invocation of
the array, repeated ``ceil(Cout'/M)`` times. A DSP packs P multiplications of low-bit operands (HiKonv packs
neighbouring activations and kernel entries), so a row completes P of its passes per cycle. Per layer:

    cycles = ceil(out_h * out_w * ceil(patch / N) / P(bits)) * ceil(Cout' / M) + overhead_cycles * ceil(Cout' / M)

with P from the target's packing table (`mpqjax.cost.packing`: the paper's by default, or HiKonv's rule).

The generic target (`GenericTarget`) counts size and BOPs only: its latency is ``BOPs / bops_per_cycle`` cycles, the
model of a machine whose throughput scales with operand width (a bit-serial or bit-flexible accelerator).

Library functions under jit cannot raise on traced values: inside `cost`, bit-widths are rounded and clipped to
[2, 16]. Check user input first with `mpqjax.nn.config.check_config` (not jitted); it raises a `ValueError` naming
the problem.

Example:
    >>> from mpqjax.nn.config import check_config
    >>> from mpqjax.nn.table import LayerSpec, LayerTable
    >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4)),))
    >>> bits, widths = check_config(table, 4, 1.0)
    >>> result = cost(table, bits, widths, FPGATarget(rows=4, cols=8))
    >>> int(result.size_bytes), int(result.latency_cycles)
    (108, 22)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.cost.targets import FPGATarget, GenericTarget, Target
from mpqjax.nn.config import MAX_BITS, MIN_BITS
from mpqjax.nn.table import LayerTable

__all__ = ["Cost", "array_cycles", "baselines", "cost", "cost_of_layers", "cycles_and_energy", "exact_ceil_div",
           "fip16_size_bytes", "layer_counts", "products_per_dsp", "table_arrays"]


class Cost(NamedTuple):
    """Cost of a configuration (leading batch axes as in the inputs; per-layer fields add a last axis)."""

    size_bytes: jax.Array
    latency_cycles: jax.Array
    latency_seconds: jax.Array
    throughput_per_second: jax.Array  # inferences per second, 1 / latency
    speedup_vs_fip16: jax.Array
    size_reduction_vs_fip16: jax.Array
    size_reduction_vs_fp32: jax.Array
    bops: jax.Array
    energy_joules: jax.Array
    layer_size_bytes: jax.Array
    layer_cycles: jax.Array
    layer_macs: jax.Array
    layer_bops: jax.Array
    layer_weights: jax.Array  # weight count of each layer at its width


@functools.lru_cache(maxsize=64)
def table_arrays(table: LayerTable) -> dict[str, np.ndarray]:
    """The table's per-layer arrays the counts start from (cached per table): its fields (`LayerTable.arrays`), each
    layer's ``channel_source`` (the layer that sets its channel count: itself, a depthwise layer's producer, -1 for
    the model input) and ``aux_per_channel`` (bias and batch-norm values per output channel)."""
    arrays = {key: np.asarray(value) for key, value in table.arrays().items()}
    # A depthwise layer produces what it consumes: follow its input chain to the layer that sets its channel count.
    channel_source = np.arange(len(table))
    for index, layer in enumerate(table):
        if layer.kind == "depthwise":
            channel_source[index] = -1 if layer.input_layer < 0 else channel_source[layer.input_layer]
    arrays["channel_source"] = channel_source
    arrays["aux_per_channel"] = arrays["use_bias"].astype(np.float32) + 2.0 * arrays["batch_norm"].astype(np.float32)
    return arrays


def _layer_channels(arrays, widths, xp=jnp, dtype=jnp.float32):
    """Channels each layer consumes and produces at ``widths`` (float arrays, shape of widths)."""
    base_out = xp.asarray(arrays["out_channels"], dtype)
    base_in = xp.asarray(arrays["in_channels"], dtype)
    scaled = xp.where(arrays["scalable"], xp.floor(base_out * widths + 0.5), base_out)
    source = arrays["channel_source"]
    produced = xp.where(source >= 0, xp.take(scaled, np.maximum(source, 0), axis=-1), base_in)
    input_layer = arrays["input_layer"]
    repeated = xp.take(produced, np.maximum(input_layer, 0), axis=-1) * arrays["input_repeat"]
    consumed = xp.where(input_layer >= 0, repeated, base_in)
    return consumed, produced


def layer_counts(table: LayerTable, widths, *, exact: bool = False) -> dict[str, jax.Array | np.ndarray]:
    """Per-layer counts of ``table`` at ``widths``, the quantities every cost is computed from.

    Args:
        table: the model's layer table.
        widths: width multiplier per layer, shape ``(..., len(table))`` (any numeric dtype or a list).
        exact: False: float32 `jax.numpy` arrays (jittable); True: float64 NumPy arrays (exact integer counts, for
            reports).

    Returns:
        ``{"consumed", "produced"}`` (channels), ``"patch"`` (input entries per output pixel), ``"weights"``,
        ``"aux"`` (bias and batch-norm values), ``"macs"``, ``"pixels"`` (output pixels) and ``"activations"``
        (input and output feature-map entries), each of the shape of ``widths``.

    Example:
        >>> from mpqjax.nn.table import LayerSpec, LayerTable
        >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4)),))
        >>> counts = layer_counts(table, [0.5], exact=True)
        >>> counts["produced"].tolist(), counts["weights"].tolist(), counts["macs"].tolist()
        ([4.0], [108.0], [1728.0])
    """
    xp, dtype = (np, np.float64) if exact else (jnp, jnp.float32)
    # One dtype whatever the caller passed (a list, an int64 or a float32 array): the same operations run for each.
    widths = np.asarray(widths, np.float64) if exact else jnp.asarray(widths, jnp.float32)
    arrays = table_arrays(table)
    consumed, produced = _layer_channels(arrays, widths, xp, dtype)
    kernel = xp.asarray(arrays["kernel_h"] * arrays["kernel_w"], dtype)
    pixels = xp.asarray(arrays["out_h"] * arrays["out_w"], dtype)
    patch = kernel * xp.where(arrays["depthwise"], 1.0, consumed / arrays["groups"])
    weights = patch * produced
    in_pixels = xp.asarray(arrays["out_h"] * arrays["stride_h"] * arrays["out_w"] * arrays["stride_w"], dtype)
    return {
        "consumed": consumed,
        "produced": produced,
        "patch": patch,
        "weights": weights,
        "aux": arrays["aux_per_channel"] * produced,
        "macs": weights * pixels,
        "pixels": pixels,
        "activations": in_pixels * consumed + pixels * produced,
    }


def products_per_dsp(target: FPGATarget, bits, xp=jnp, dtype=jnp.float32):
    """Multiplications one DSP of ``target`` packs at ``bits`` (integral floats, any shape): entry ``bits - 1`` of
    its packing table. ``xp`` and ``dtype``: `jax.numpy` and float32 (jittable) or NumPy and float64 (exact)."""
    packing = xp.asarray(target.packing, dtype)
    return packing[bits.astype(np.int32) - 1]


def exact_ceil_div(numerator, denominator, xp=jnp):
    """``ceil(numerator / denominator)`` of whole numbers, exact below 2**24 in float32.

    A compiled program may divide by a broadcast divisor as a multiplication by its reciprocal, and that product can
    land just above a whole quotient (``2940 * fl(1/15)`` is 196.00002, whose ceil is 197): the result steps back
    where one divisor fewer already covers the numerator. Divisors that are powers of two are exact either way.

    Example:
        >>> int(exact_ceil_div(jnp.float32(2940.0), jnp.float32(15.0)))
        196
    """
    rounded = xp.ceil(numerator / denominator)
    return xp.where((rounded - 1.0) * denominator >= numerator, rounded - 1.0, rounded)


def array_cycles(target: FPGATarget, pixels, patch, channels, products, xp=jnp, *, ceil_div=None):
    """Cycles of the systolic array computing ``channels`` output channels at ``products`` multiplications per DSP.

    The FPGA formula of the module docstring; shared with `mpqjax.cost.channels`, which runs it (with ``xp=np``) once
    per group of channels of equal bit-width, and with `mpqjax.cost.relaxed`, which rounds up its own way.

    Args:
        target: the FPGA.
        pixels, patch, channels: output pixels, input entries per output pixel and output channels (arrays that
            broadcast together).
        products: multiplications per DSP (`products_per_dsp`).
        xp: the array module.
        ceil_div: ``ceil_div(numerator, denominator)``, the quotient rounded up; `exact_ceil_div` when None.
    """
    if ceil_div is None:
        ceil_div = functools.partial(exact_ceil_div, xp=xp)
    invocations = ceil_div(channels, target.rows)
    row_passes = pixels * ceil_div(patch, target.cols)
    return ceil_div(row_passes, products) * invocations + target.overhead_cycles * invocations


def _layer_cost(table: LayerTable, bits, widths, target: Target, bias_bits):
    """Per-layer size in bits, cycles, MACs, BOPs and energy in picojoules."""
    quantities = layer_counts(table, widths)
    size_bits = quantities["weights"] * bits + quantities["aux"] * bias_bits
    bops = quantities["macs"] * bits * bits
    bytes_moved = (quantities["weights"] + quantities["activations"]) * bits / 8.0

    def on_fpga():
        products = products_per_dsp(target, bits)
        cycles = array_cycles(target, quantities["pixels"], quantities["patch"], quantities["produced"], products)
        return cycles, quantities["macs"] / products

    cycles, energy_pj = cycles_and_energy(target, bops, bytes_moved, on_fpga)
    return size_bits, cycles, quantities["macs"], bops, energy_pj


def cycles_and_energy(target: Target, bops, bytes_moved, on_fpga):
    """Per-layer cycles and energy in picojoules on ``target``, the one place each target's rule is written.

    On an `FPGATarget`, ``on_fpga() -> (cycles, DSP operations)`` gives the array's cycles and operations (called for
    an FPGA only: the counts differ between per-layer, channel-wise and relaxed costs); the energy is the operations'
    plus the bytes moved. On a `GenericTarget`, both follow the bit-operations: ``bops / bops_per_cycle`` cycles,
    ``bops * energy_per_bop_pj`` plus the bytes moved.

    Raises:
        TypeError: another kind of target.
    """
    if isinstance(target, FPGATarget):
        cycles, dsp_ops = on_fpga()
        return cycles, dsp_ops * target.energy_per_dsp_op_pj + bytes_moved * target.energy_per_byte_pj
    if isinstance(target, GenericTarget):
        return bops / target.bops_per_cycle, bops * target.energy_per_bop_pj + bytes_moved * target.energy_per_byte_pj
    raise TypeError(f"unsupported target type {type(target).__name__}")


def cost(table: LayerTable, bits, widths, target: Target | None = None) -> Cost:
    """Size, latency, speed-up, BOPs and energy of configurations of ``table`` on ``target``; jittable, vmappable.

    Args:
        table: the model's layer table (static).
        bits: bit-width per layer, shape ``(..., len(table))`` (rounded and clipped to [2, 16]; check user input
            with `mpqjax.nn.config.check_config` first); any numeric dtype, used as float32.
        widths: width multiplier per layer, same shape (broadcasting applies); used as float32.
        target: `FPGATarget` (default) or `GenericTarget`; its numbers may be traced.

    Returns:
        A `Cost` of float32 arrays: totals with the configurations' batch shape, per-layer fields with a last axis.

    Example:
        >>> costs = jax.jit(jax.vmap(lambda b, w: cost(table, b, w)))(bits_batch, widths_batch)  # doctest: +SKIP
    """
    target = FPGATarget() if target is None else target
    bits = jnp.clip(jnp.round(jnp.asarray(bits, jnp.float32)), MIN_BITS, MAX_BITS)
    widths = jnp.asarray(widths, jnp.float32)
    bits, widths = jnp.broadcast_arrays(bits, widths)
    size_bits, cycles, macs, bops, energy_pj = _layer_cost(table, bits, widths, target, target.bias_bits)

    return cost_of_layers(size_bits, cycles, macs, bops, energy_pj, layer_counts(table, widths)["weights"],
                          baselines(table, target), target.clock_hz)


def baselines(table: LayerTable, target: Target):
    """``(FiP16 size bits, FiP16 cycles, FP32 size bits)`` per layer (jax.numpy float32): the `cost_of_layers`
    baselines of `cost` and of `mpqjax.cost.relaxed`."""
    # The baselines' fixed 16 and 32 bits are not configurations: they are not clipped.
    base_bits = jnp.full((len(table),), 16.0)
    base_widths = jnp.ones((len(table),), jnp.float32)
    fip16_size_bits, fip16_cycles, _, _, _ = _layer_cost(table, base_bits, base_widths, target, 16.0)
    fp32_size_bits = _layer_cost(table, 2 * base_bits, base_widths, GenericTarget(), 32.0)[0]
    return fip16_size_bits, fip16_cycles, fp32_size_bits


def cost_of_layers(size_bits, cycles, macs, bops, energy_pj, weights, baselines, clock_hz) -> Cost:
    """A `Cost` from per-layer figures (last axis: layers), its totals summed over layers.

    Args:
        size_bits, cycles, macs, bops, energy_pj, weights: per-layer size in bits, cycles, MACs, BOPs, energy in
            picojoules and weight count (`jax.numpy` or NumPy arrays).
        baselines: ``(FiP16 size bits, FiP16 cycles, FP32 size bits)`` per layer.
        clock_hz: the target's clock.
    """
    fip16_size_bits, fip16_cycles, fp32_size_bits = baselines
    total_cycles = cycles.sum(-1)
    latency_seconds = total_cycles / clock_hz
    size_bytes = size_bits.sum(-1) / 8.0
    return Cost(
        size_bytes=size_bytes,
        latency_cycles=total_cycles,
        latency_seconds=latency_seconds,
        throughput_per_second=1.0 / latency_seconds,
        speedup_vs_fip16=fip16_cycles.sum() / total_cycles,
        size_reduction_vs_fip16=fip16_size_bits.sum() / 8.0 / size_bytes,
        size_reduction_vs_fp32=fp32_size_bits.sum() / 8.0 / size_bytes,
        bops=bops.sum(-1),
        energy_joules=energy_pj.sum(-1) * 1e-12,
        layer_size_bytes=size_bits / 8.0,
        layer_cycles=cycles,
        layer_macs=macs,
        layer_bops=bops,
        layer_weights=weights,
    )


def fip16_size_bytes(table: LayerTable) -> float:
    """Size in bytes of the FiP16 baseline of ``table``: width 1, weights and auxiliary parameters at 16 bits.

    Args:
        table: the model's layer table.

    Returns:
        The size in bytes, a Python float.
    """
    return float(cost(table, 16, 1.0, GenericTarget(bias_bits=16)).size_bytes)
