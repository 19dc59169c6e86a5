"""Uniform fake-quantisation with a straight-through estimator; the bit-width is a traced array.

Weights are quantised symmetrically with one scale per output channel (the last axis of a kernel):
``scale = max|w| / (2^(b-1) - 1)``, ``q = round(w / scale) * scale``; ``b`` is one bit-width for the kernel, or one
per output channel (a layer's optional per-channel weight bit-widths, `mpqjax.nn.models.Model.with_weight_bits`).
Activations are quantised with one clipping value per tensor: unsigned inputs (after a ReLU) on ``[0, clip]`` with
``2^b - 1`` steps, signed inputs on ``[-clip, clip]`` with ``2^(b-1) - 1`` steps each side. Rounding is to
nearest, ties to even (``jnp.round``).

The bit-width is an array, so one compiled function serves every bit-width and configurations can be vmapped.
Whatever its type (a Python int, an integer array, a float32 array), it is used as float32, the dtype the models'
configurations have (`mpqjax.training.train.config_arrays`), so every form runs the same operations.
Bit-widths of `PASS_THROUGH_BITS` (16, `mpqjax.nn.config.MAX_BITS`) and above leave values unchanged; `FLOAT_BITS`
(32) is the internal "float" value the layers and the float model use. A user's bit-widths are checked by
`mpqjax.nn.config` (integers in [2, 16]) before they reach these functions, which cannot raise on traced values.

The activation clipping value is either calibrated (a constant found from a few batches: `calibration_stats`
gives max, percentile and MSE-optimal candidates) or learned by gradient descent: ``"pact"`` (gradient only from
clipped values, Choi et al. 2018) or ``"lsq"`` (the rounding residual also reaches the clip, as LSQ's step-size
gradient, Esser et al. 2020). `experiments/bench_quant.py` compares them at 2-3 bits: measured in docs/results.md
(section "Quantisation-aware training").

A gradient-based precision search runs the model on *expected* quantisation instead: `mixed_weights` and
`mixed_activations` are the probability-weighted sums of the quantisers at a few candidate bit-widths (an option of 0
bits is a pruned tensor or channel: its term is zero).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mpqjax.nn.config import MAX_BITS
from mpqjax.nn.config import MIN_BITS as MIN_BITS  # kept reachable here: callers read quant.MIN_BITS

__all__ = [
    "CALIBRATION_METHODS",
    "CLIPPING_MODES",
    "DEFAULT_ACT_CLIP",
    "FLOAT_BITS",
    "PASS_THROUGH_BITS",
    "PRECISIONS",
    "calibration_stats",
    "is_pass_through",
    "mixed_activations",
    "mixed_weights",
    "quantize_activations",
    "quantize_weights",
    "round_ste",
    "signed_levels",
    "unsigned_levels",
]

PASS_THROUGH_BITS = MAX_BITS
FLOAT_BITS = 32
# A layer's activation clip before calibration or training sets it.
DEFAULT_ACT_CLIP = 4.0
CLIPPING_MODES = ("calibrated", "pact", "lsq")
CALIBRATION_METHODS = ("max", "percentile", "mse")
PRECISIONS = ("float32", "bfloat16")
"""What a quantised layer's convolution or matrix product takes its quantised operands in (accumulating in float32):
``"bfloat16"`` halves their memory traffic and uses the GPU's fast matrix units (`mpqjax.nn.models.Model.precision`).
"""

# Smallest scale or clip: keeps all-zero channels (masked or pruned) from dividing by zero.
_TINY = 1e-8


def round_ste(x):
    """Round to nearest (ties to even) with a straight-through gradient (d round(x)/dx := 1)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def _bits_array(bits):
    """``bits`` as a float32 array: an int, an int64 array and a float32 array run the same operations."""
    return jnp.asarray(bits, jnp.float32)


def signed_levels(bits):
    """Positive levels of a symmetric signed quantiser: 2^(b-1) - 1 (1 at 2 bits, 127 at 8 bits)."""
    # exp2 is approximate in float32 (2^13 came out as 8192.004): round, bit-widths are integers
    return jnp.round(jnp.exp2(jnp.asarray(bits, jnp.float32) - 1.0)) - 1.0


def unsigned_levels(bits):
    """Levels above zero of an unsigned quantiser: 2^b - 1 (3 at 2 bits, 255 at 8 bits)."""
    return jnp.round(jnp.exp2(jnp.asarray(bits, jnp.float32))) - 1.0


def is_pass_through(bits):
    """Whether ``bits`` means full precision (>= `PASS_THROUGH_BITS`)."""
    return jnp.asarray(bits) >= PASS_THROUGH_BITS


def quantize_weights(kernel, bits):
    """Symmetric per-output-channel fake-quantisation of a kernel whose last axis is the output channel.

    The value is exactly ``code * scale`` (``code`` an integer in ``[-levels, levels]``) in every compiled program:
    no fused multiply-add can move it, so a program exported with a symbolic batch computes what training did.

    Gradient (straight-through estimator): exactly the identity, ``d q / d w = 1`` for every weight, a channel's
    largest included, at every bit-width.

    Args:
        kernel: weights, any shape ``(..., out_channels)``.
        bits: a scalar bit-width, or one per output channel, shape ``(out_channels,)`` (broadcast along the last
            axis); traced or concrete, any numeric dtype (used as float32). Channels at >= 16 bits are returned
            unchanged.

    Returns:
        The quantised kernel, same shape and dtype.

    Example:
        >>> quantize_weights(jnp.array([[1.0], [0.4], [-0.6]]), 2).ravel().tolist()
        [1.0, 0.0, -1.0]
        >>> quantize_weights(jnp.array([[1.0, 1.0], [0.25, 0.25]]), jnp.array([2, 16])).tolist()  # per channel
        [[1.0, 1.0], [0.0, 0.25]]
    """
    bits = _bits_array(bits)  # () or (out_channels,): both broadcast against the (1, ..., 1, out_channels) scale
    reduce_axes = tuple(range(kernel.ndim - 1))
    levels = signed_levels(bits)
    max_abs = jnp.max(jnp.abs(kernel), axis=reduce_axes, keepdims=True)
    scale = jax.lax.stop_gradient(jnp.maximum(max_abs, _TINY) / levels)
    codes = jax.lax.stop_gradient(jnp.round(jnp.clip(kernel / scale, -levels, levels)))
    # exactly codes * scale forward, exactly the identity backward (kernel - kernel is 0 in any compiled program)
    quantized = (codes * scale + (kernel - jax.lax.stop_gradient(kernel))).astype(kernel.dtype)
    return jnp.where(is_pass_through(bits), kernel, quantized)


def quantize_activations(x, bits, clip, *, signed: bool, mode: str = "calibrated"):
    """Per-tensor fake-quantisation of activations on ``[0, clip]`` (unsigned) or ``[-clip, clip]`` (signed).

    Args:
        x: activations.
        bits: scalar bit-width (traced or concrete, any numeric dtype: used as float32); >= 16 returns ``x``
            unchanged.
        clip: scalar clipping value (> 0).
        signed: keyword-only structural switch; False for inputs known to be non-negative (after a ReLU).
        mode: ``"calibrated"`` (clip is a constant: no gradient reaches it), ``"pact"`` (the clip gets the PACT
            gradient: 1 where x is clipped above, -1 where clipped below, 0 inside) or ``"lsq"`` (PACT's gradient
            plus the rounding residual ``(round(u) - u) / levels`` inside the range, LSQ's step-size gradient).

    Returns:
        The quantised activations, exactly ``code * step`` in every compiled program. The gradient with respect
        to ``x`` is 1 inside the clipping range, 0 outside and 1/2 on its bounds exactly (`jax.numpy.clip` splits
        a tie); 1 everywhere at bit-widths >= 16.

    Example:
        >>> quantize_activations(jnp.array([0.2, 0.5, 1.7]), 2, 1.5, signed=False).tolist()
        [0.0, 0.5, 1.5]
    """
    if mode not in CLIPPING_MODES:
        raise ValueError(f"activation clipping mode must be one of {CLIPPING_MODES}, got {mode!r}")
    if mode == "calibrated":
        clip = jax.lax.stop_gradient(clip)
    bits = _bits_array(bits)
    clip = jnp.maximum(clip, _TINY)
    levels = signed_levels(bits) if signed else unsigned_levels(bits)
    lower = -clip if signed else jnp.zeros_like(clip)
    clipped = jnp.clip(x, lower, clip)
    step = clip / levels
    units = clipped / step
    codes = jax.lax.stop_gradient(jnp.round(units))
    # forward: exactly codes * step; backward: the clip's derivative (and LSQ's residual for the step)
    quantized = jax.lax.stop_gradient(codes * step) + (clipped - jax.lax.stop_gradient(clipped))
    if mode == "lsq":
        quantized = quantized + jax.lax.stop_gradient(codes - units) * (step - jax.lax.stop_gradient(step))
    return jnp.where(is_pass_through(bits), x, quantized.astype(x.dtype))


def _options_array(options):
    """The candidate bit-widths as a float32 ``[P]`` array (a traced array stays traced)."""
    options = _bits_array(options)
    if options.ndim != 1:
        raise ValueError(f"options must be a 1-D array of candidate bit-widths, got shape {options.shape}")
    return options


def _mixture(quantize, options, probs, value):
    """``sum_p probs[..., p] * quantize(value, options[p])`` (``probs[..., p]`` broadcast along the last axis of
    ``value``), a term of an option <= 0 bits being zero: one term per option, accumulated in option order."""
    mixed = None
    for position in range(options.shape[0]):
        option = options[position]
        pruned = option <= 0
        # a pruned option quantises at a harmless bit-width (no division by zero levels) and its term is zeroed
        quantized = quantize(value, jnp.where(pruned, float(PASS_THROUGH_BITS), option))
        term = probs[..., position].astype(value.dtype) * jnp.where(pruned, jnp.zeros_like(quantized), quantized)
        mixed = term if mixed is None else mixed + term
    return mixed


def mixed_weights(kernel, options, probs):
    """The expected fake-quantised kernel of a mixture of bit-widths: ``sum_p probs[..., p] * Q_{options[p]}(kernel)``.

    Each term is `quantize_weights` at one option (one scale per output channel, the last axis). The gradient
    reaches ``probs`` (each probability's gradient is its term's quantised kernel against the cotangent) and the
    kernel through the straight-through estimator (``sum_p probs[..., p]`` times the cotangent). A one-hot ``probs``
    is exactly that option's quantised kernel.

    Args:
        kernel: weights, any shape ``(..., out_channels)``.
        options: ``[P]`` candidate bit-widths (traced or concrete, any numeric dtype); 0 is a pruned option whose
            quantised kernel is zero, >= 16 leaves the kernel unchanged.
        probs: ``[P]`` (one mixture for the whole kernel) or ``[out_channels, P]`` (one per output channel).

    Returns:
        The mixed kernel, same shape and dtype as ``kernel``.

    Example:
        >>> kernel = jnp.array([[1.0], [0.5], [-0.75]])  # at 2 bits: [1, 0, -1]
        >>> mixed_weights(kernel, jnp.array([2, 16]), jnp.array([0.5, 0.5])).ravel().tolist()
        [1.0, 0.25, -0.875]
        >>> mixed_weights(kernel, jnp.array([0, 2]), jnp.array([[0.25, 0.75]])).ravel().tolist()  # per channel
        [0.75, 0.0, -0.75]
    """
    options = _options_array(options)
    probs = jnp.asarray(probs)
    if probs.shape[-1:] != options.shape or probs.ndim not in (1, 2):
        raise ValueError(f"weight probabilities must have shape ({options.shape[0]},) or (out_channels, "
                         f"{options.shape[0]}) for {options.shape[0]} options, got {probs.shape}")
    if probs.ndim == 2:
        channels = kernel.shape[-1]
        if probs.shape[0] != channels:
            raise ValueError(f"weight probabilities have {probs.shape[0]} rows but the kernel has {channels} output "
                             f"channels")
        # the bit-width as a per-channel vector: the same program as per-channel weight bit-widths
        return _mixture(lambda w, b: quantize_weights(w, jnp.broadcast_to(b, (channels,))), options, probs, kernel)
    return _mixture(quantize_weights, options, probs, kernel)


def mixed_activations(x, options, probs, clip, *, signed: bool, mode: str = "calibrated"):
    """The expected fake-quantised activations of a mixture of bit-widths:
    ``sum_a probs[a] * Q_{options[a]}(x, clip)``, every term `quantize_activations` with the one ``clip``.

    The gradient reaches ``probs``, ``x`` (straight-through, inside the clipping range) and, in the ``"pact"`` and
    ``"lsq"`` modes, ``clip`` (each term's gradient weighted by its probability). A one-hot ``probs`` is exactly that
    option's quantised activations.

    Args:
        x: activations.
        options: ``[A]`` candidate bit-widths (traced or concrete); >= 16 leaves ``x`` unchanged, 0 gives zeros.
        probs: ``[A]`` probabilities.
        clip: scalar clipping value (> 0).
        signed, mode: as for `quantize_activations`.

    Returns:
        The mixed activations, same shape and dtype as ``x``.

    Example:
        >>> x = jnp.array([0.25, 0.5, 2.0])  # at 2 bits on [0, 1.5]: [0, 0.5, 1.5]
        >>> mixed_activations(x, jnp.array([2, 16]), jnp.array([0.5, 0.5]), 1.5, signed=False).tolist()
        [0.125, 0.5, 1.75]
    """
    options = _options_array(options)
    probs = jnp.asarray(probs)
    if probs.shape != options.shape:
        raise ValueError(f"activation probabilities must have shape {options.shape} (one per option), got "
                         f"{probs.shape}")
    return _mixture(lambda value, bits: quantize_activations(value, bits, clip, signed=signed, mode=mode),
                    options, probs, x)


def calibration_stats(x, bits, *, signed: bool, channel_mask=None, percentile: float = 99.99,
                      max_samples: int = 16384, mse_grid: int = 64):
    """Candidate clipping values for one batch of a layer's input: ``[max, percentile, mse_optimal]``.

    ``mse_optimal`` minimises the mean squared quantisation error at ``bits`` over a grid of ``mse_grid``
    fractions of the max. A strided subset of at most ``max_samples`` positions keeps the cost flat in the batch
    size. Channels where ``channel_mask`` is False (masked widths) are left out.

    Args:
        x: the layer's input activations ``(..., channels)``.
        bits: scalar bit-width used for the MSE search (float bit-widths give the max).
        signed: whether the input is signed (clips |x|) or non-negative.
        channel_mask: optional boolean ``(channels,)``.
        percentile: the percentile of |x| reported second.
        max_samples: at most this many positions (rows of ``channels`` values) are used.
        mse_grid: number of candidate clips for the MSE search.

    Returns:
        float32 array of shape (3,).
    """
    bits = _bits_array(bits)
    channels = x.shape[-1]
    rows = x.reshape(-1, channels)
    stride = max(1, rows.shape[0] * channels // max_samples)
    rows = rows[::stride]
    values = jnp.abs(rows) if signed else jnp.maximum(rows, 0.0)
    weights = jnp.ones_like(values) if channel_mask is None else jnp.broadcast_to(channel_mask, values.shape)
    weights = weights.astype(jnp.float32)
    values = values.reshape(-1)
    weights = weights.reshape(-1)
    max_value = jnp.max(values * weights)
    order = jnp.argsort(values)
    sorted_values = values[order]
    cumulative = jnp.cumsum(weights[order])
    rank = jnp.searchsorted(cumulative, cumulative[-1] * percentile / 100.0)
    percentile_value = sorted_values[jnp.clip(rank, 0, values.shape[0] - 1)]
    mse_value = jnp.where(is_pass_through(bits), max_value, _mse_clip(values, weights, max_value, bits, mse_grid))
    return jnp.stack([max_value, percentile_value, mse_value]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=4)
def _mse_clip(values, weights, max_value, bits, grid: int):
    """Of ``grid`` fractions of ``max_value``, the clip whose quantisation of ``values`` at ``bits`` has the smallest
    weighted squared error (one compiled program for every call, eager or traced)."""
    candidates = max_value * jnp.arange(1, grid + 1, dtype=jnp.float32) / grid
    levels = unsigned_levels(jnp.minimum(bits, PASS_THROUGH_BITS - 1))

    def squared_error(clip):
        # the forward value of quantize_activations(values, bits, clip, signed=False), without its gradient terms
        step = jnp.maximum(clip, _TINY) / levels
        quantized = jnp.round(jnp.clip(values, 0.0, jnp.maximum(clip, _TINY)) / step) * step
        return jnp.sum(weights * (quantized - values) ** 2)

    # a loop over chunks of 8 clips: on the CPU much faster than all clips at once, one launch per chunk on a GPU
    return candidates[jnp.argmin(jax.lax.map(squared_error, candidates, batch_size=8))]
