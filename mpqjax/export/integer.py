"""Integer codes of a quantised layer: weights with per-channel scales, activations, and the way back to floats.

The rules are those of the fake quantiser (`mpqjax.nn.quant`), written in NumPy so that an exported model can be
checked and run without JAX: ``dequantize(*integer_weights(kernel, bits))`` is the kernel the quantiser trains with,
and `requantisable_kernel` turns exported codes back into a float kernel that the quantiser maps exactly onto them.

Example:
    >>> weight, scale = integer_weights(np.array([[1.0], [0.4], [-0.6]]), 2)
    >>> weight.ravel().tolist(), scale.tolist(), dequantize(weight, scale).ravel().tolist()
    ([1, 0, -1], [1.0], [1.0, 0.0, -1.0])
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from mpqjax.nn import quant
from mpqjax.nn.config import MIN_BITS

__all__ = ["MAX_EXPORT_BITS", "activation_scale", "dequantize", "integer_activations", "integer_weights",
           "requantisable_kernel", "weight_dtype"]

MAX_EXPORT_BITS = 16
# The floor mpqjax.nn.quant puts under weight scales and clips (all-zero channels); the exactness tests guard it.
_SCALE_FLOOR = np.float32(1e-8)


def weight_dtype(bits: int) -> np.dtype:
    """The integer dtype holding ``bits``-bit weights: int8 up to 8 bits, int16 up to `MAX_EXPORT_BITS`.

    Raises:
        ValueError: ``bits`` not an integer in [`mpqjax.nn.config.MIN_BITS`, `MAX_EXPORT_BITS`].
    """
    if not (float(bits) == int(bits) and MIN_BITS <= int(bits) <= MAX_EXPORT_BITS):
        raise ValueError(f"exported weights hold {MIN_BITS} to {MAX_EXPORT_BITS} bits (int8 up to 8, int16 up "
                         f"to {MAX_EXPORT_BITS}), got {bits}")
    return np.dtype(np.int8) if int(bits) <= 8 else np.dtype(np.int16)


def _weight_levels(bits: int) -> np.float32:
    return np.float32(2.0 ** (int(bits) - 1) - 1)


def _activation_levels(bits: int, signed: bool) -> np.float32:
    return np.float32(2.0 ** (int(bits) - 1) - 1 if signed else 2.0 ** int(bits) - 1)


@functools.cache
def _runtime_weight_levels(bits: int) -> np.float32:
    """The level count the fake quantiser computes inside a model, where the bit-width is traced.

    Not always 2^(b-1) - 1 exactly: XLA's exp2 on CPU is not exact at 14 bits. The loader must match it to rebuild
    kernels that re-quantise to exactly the exported weights.
    """
    return np.float32(jax.jit(quant.signed_levels)(np.float32(bits)))


def integer_weights(kernel, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The integer codes and per-output-channel scales of a kernel at ``bits`` bits.

    The rule is the fake quantiser's: ``scale = max(max|kernel|, 1e-8) / (2^(b-1) - 1)`` per output channel
    (float32 division), ``weight = round(clip(kernel / scale, -L, L))``. ``weight * scale`` is then exactly the
    kernel `mpqjax.nn.quant.quantize_weights` computes inside a model (bit-width traced) wherever the quantiser's
    level count is exactly ``2^(b-1) - 1``: on CPU every bit-width but 14, where XLA's exp2 makes its scales one
    float32 rounding larger, so a code within that of a half can round the other way. An eager call of the
    quantiser with a Python-int bit-width differs by one float32 rounding: XLA turns the division by a constant
    into a multiplication by its reciprocal. At 16 bits (full precision for the fake quantiser) this is the same
    rule without the pass-through.

    Args:
        kernel: float weights ``(..., out_channels)``.
        bits: an integer in [2, 16], or one per output channel (a channel-wise configuration).

    Returns:
        ``(weight, scale)``: int8/int16 codes of the kernel's shape in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, and
        float32 scales of shape ``(out_channels,)``.

    Raises:
        ValueError: ``bits`` outside [2, 16] (see `weight_dtype`), or a kernel without an output-channel axis.

    Example:
        >>> weight, scale = integer_weights(np.array([[1.0], [0.4], [-0.6]]), 2)
        >>> weight.ravel().tolist(), scale.tolist()
        ([1, 0, -1], [1.0])
    """
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim < 1:
        raise ValueError("a kernel needs an output-channel axis (its last axis)")
    if np.ndim(bits):  # one bit-width per output channel: each channel has its own scale and levels
        per_channel = np.asarray(bits)
        if per_channel.shape != kernel.shape[-1:]:
            raise ValueError(f"per-channel bits of shape {per_channel.shape} for {kernel.shape[-1]} output channels")
        dtype = max((weight_dtype(value) for value in np.unique(per_channel)), key=lambda d: d.itemsize)
        levels = np.asarray([_weight_levels(value) for value in per_channel], np.float32)
    else:
        dtype, levels = weight_dtype(bits), _weight_levels(bits)
    max_abs = np.max(np.abs(kernel), axis=tuple(range(kernel.ndim - 1))) if kernel.ndim > 1 else np.abs(kernel)
    scale = (np.maximum(max_abs, _SCALE_FLOOR) / levels).astype(np.float32)
    units = np.clip(kernel / scale, -levels, levels)
    return np.round(units).astype(dtype), scale


def dequantize(weight, weight_scale) -> np.ndarray:
    """The float32 weights ``weight * weight_scale`` of exported integer codes (scales on the last axis)."""
    return np.asarray(weight).astype(np.float32) * np.asarray(weight_scale, np.float32)


def activation_scale(act_clip, bits: int, *, signed: bool) -> np.float32:
    """The step of a layer's input quantiser: ``max(c, 1e-8) / levels`` in float32.

    Args:
        act_clip: the clipping value c.
        bits: the layer's bit-width b.
        signed: whether the input is signed: levels = ``2^(b-1) - 1``, else ``2^b - 1``.

    Example:
        >>> float(activation_scale(1.5, 2, signed=False))
        0.5
    """
    return np.float32(np.maximum(np.float32(act_clip), _SCALE_FLOOR) / _activation_levels(bits, signed))


def integer_activations(x, bits: int, act_clip, *, signed: bool) -> tuple[np.ndarray, np.float32]:
    """Run-time quantisation of a layer's input as an exported model specifies it, in NumPy.

    Args:
        x: the layer's input activations.
        bits: the layer's bit-width (below 16).
        act_clip: the layer's clipping value (``<layer>/act_clip``).
        signed: the layer's ``input_signed``.

    Returns:
        ``(x_int, act_scale)``: int32 codes (``x_int * act_scale`` is the quantised input) and the step.

    Raises:
        ValueError: ``bits`` outside [2, 16] (see `weight_dtype`).

    Example:
        >>> codes, step = integer_activations(np.array([0.2, 0.5, 1.7]), 2, 1.5, signed=False)
        >>> codes.tolist(), float(step)
        ([0, 1, 3], 0.5)
    """
    weight_dtype(bits)
    clip = np.maximum(np.float32(act_clip), _SCALE_FLOOR)
    step = activation_scale(act_clip, bits, signed=signed)
    clipped = np.clip(np.asarray(x, np.float32), -clip if signed else np.float32(0.0), clip)
    return np.round(clipped / step).astype(np.int32), step


def requantisable_kernel(weight, weight_scale, bits: int) -> np.ndarray:
    """A float32 kernel that the fake quantiser at ``bits`` (traced) maps exactly to ``weight * weight_scale``.

    Re-quantising ``w = q * s`` recomputes the scale from ``max|w| = fl(L * s)``. For a scale that came from a
    division (``s = fl(max|w0| / L)``), ``fl(fl(L * s) / L) == s`` held on every random channel tried (the tests
    check it per bit-width), so plain ``q * s`` is idempotent (same codes, same scale, same weights) wherever the
    fake quantiser's level count ``Lq`` is the integer ``L``. Where it is not (XLA's exp2 at 14 bits on CPU) the
    scale comes back one rounding off unless the channel's largest weights are ``fl(Lq * s)``. Writing the entries
    at the clip as such a value (checked, with neighbouring floats tried) covers both cases. A channel where none
    recovers ``s`` keeps ``q * s``; so does one whose weights are all below the quantiser's 1e-8 scale floor, which
    gets the floored scale back (off by the level count's error where there is one).

    Args:
        weight: integer codes ``(..., out_channels)`` (`integer_weights`).
        weight_scale: their float32 scales ``(out_channels,)``.
        bits: the layer's bit-width; at 16 (full precision for the fake quantiser) the kernel is ``q * s``.

    Returns:
        A float32 kernel of the codes' shape; `dequantize` of the same codes up to the clip entries' last bits.
    """
    weight_scale = np.asarray(weight_scale, np.float32)
    kernel = dequantize(weight, weight_scale)
    if bits >= quant.PASS_THROUGH_BITS:
        return kernel
    levels = _runtime_weight_levels(int(bits))
    channels = kernel.shape[-1]
    codes = np.asarray(weight).reshape(-1, channels)
    flat = kernel.reshape(-1, channels)
    at_clip = np.abs(codes) == np.round(levels)
    clip_value = (weight_scale * levels).astype(np.float32)
    chosen = clip_value.copy()
    found = np.zeros(channels, bool)
    for direction, count in ((0.0, 0), (np.inf, 1), (-np.inf, 1), (np.inf, 2), (-np.inf, 2)):
        candidate = clip_value
        for _ in range(count):
            candidate = np.nextafter(candidate, np.float32(direction))
        recovered = (np.maximum(candidate, _SCALE_FLOOR) / levels).astype(np.float32) == weight_scale
        chosen = np.where(recovered & ~found, candidate, chosen)
        found |= recovered
    # Channels without codes at the clip have floored scales that come back unchanged.
    replace = at_clip & found[None, :]
    flat = np.where(replace, np.sign(codes) * chosen[None, :], flat).astype(np.float32)
    return flat.reshape(kernel.shape)
