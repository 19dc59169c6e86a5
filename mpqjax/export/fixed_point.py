"""Fixed-point arithmetic for integer-only inference: dyadic multipliers, rescaling, exponents.

A tensor between layers is an int32 array ``q`` with an exponent ``F``: its value is ``q / 2^F``. Every real
multiplier ``M`` (a layer's folded scale, a batch-norm factor, a pooling divisor) is applied as a dyadic number
``m / 2^k`` with an integer ``m`` of 31 significant bits: ``(q * m + 2^(k-1)) >> k`` in int64, as an accelerator
does with one multiplier and one shift (HAWQ-V3's "dyadic requantisation"). The functions on arrays run in JAX
and need 64-bit integers: call them while ``jax.enable_x64(True)`` is in force (the integer programs are traced
that way).

Example:
    >>> multiplier, shift = dyadic(np.array([0.75, -3.0]))
    >>> (multiplier / 2.0 ** shift).tolist()
    [0.75, -3.0]
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

__all__ = ["HEADROOM_BITS", "MAX_EXPONENT", "dyadic", "exponent_for", "rescale", "shift_exponent"]

#: A fixed-point tensor keeps its largest possible magnitude below 2^HEADROOM_BITS (int32 holds 2^31).
HEADROOM_BITS = 30
#: Exponents are kept within +-MAX_EXPONENT, so that every shift stays inside an int64.
MAX_EXPONENT = 40
# Significant bits of a dyadic multiplier: q (< 2^31) times m (< 2^31) stays inside an int64.
_MULTIPLIER_BITS = 30
_MAX_SHIFT = 62


def exponent_for(bound: float) -> int:
    """The largest exponent F with ``bound * 2^F < 2^HEADROOM_BITS`` (``bound``: the tensor's largest magnitude).

    Example:
        >>> exponent_for(1.0), exponent_for(1000.0)
        (29, 20)
    """
    if not math.isfinite(bound):
        raise ValueError(f"a fixed-point tensor needs a finite bound on its values, got {bound}")
    if bound <= 0.0:
        return MAX_EXPONENT
    exponent = HEADROOM_BITS - 1 - math.floor(math.log2(bound))
    return int(min(max(exponent, -MAX_EXPONENT), MAX_EXPONENT))


def dyadic(multipliers) -> tuple[np.ndarray, np.ndarray]:
    """``(m, k)``: int64 arrays with ``m / 2^k`` the nearest dyadic number to each multiplier (31 significant bits).

    Zero gives ``(0, 0)``; a multiplier too small for a shift of 62 rounds to zero.

    Example:
        >>> m, k = dyadic(np.array([0.1]))
        >>> abs(m[0] / 2.0 ** k[0] - 0.1) < 1e-10
        True
    """
    values = np.asarray(multipliers, np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("a fixed-point multiplier is not finite (a scale or batch-norm factor overflowed)")
    exponents = np.floor(np.log2(np.where(values == 0.0, 1.0, np.abs(values))))
    shifts = np.clip(_MULTIPLIER_BITS - exponents, 0, _MAX_SHIFT)
    multiplier = np.round(values * np.exp2(shifts))
    too_large = np.abs(multiplier) >= 2.0 ** 31  # only where the shift was clipped at 0: M itself >= 2^31
    if np.any(too_large):
        raise ValueError(f"a fixed-point multiplier of {float(np.max(np.abs(values))):.3g} does not fit 31 bits")
    return multiplier.astype(np.int64), np.where(values == 0.0, 0, shifts).astype(np.int64)


def rescale(q, multipliers):
    """``round(q * M)`` for int32 ``q`` and real multipliers ``M`` (NumPy, broadcast against ``q``), in integers.

    The product ``q * m`` is formed in int64 and shifted right by ``k`` with rounding (half up); the result is
    saturated to int32.
    """
    multiplier, shift = dyadic(multipliers)
    wide = q.astype(jnp.int64) * jnp.asarray(multiplier)
    half = jnp.asarray(np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0))
    shifted = jnp.right_shift(wide + half, jnp.asarray(shift))
    return jnp.clip(shifted, -(2 ** 31) + 1, 2 ** 31 - 1).astype(jnp.int32)


def shift_exponent(q, exponent: int, new_exponent: int):
    """``q / 2^exponent`` written with ``new_exponent`` (a rounding right shift, or a left shift when it grows)."""
    if new_exponent == exponent:
        return q
    if new_exponent > exponent:
        return jnp.left_shift(q.astype(jnp.int64), new_exponent - exponent).astype(jnp.int32)
    drop = exponent - new_exponent
    if drop > _MAX_SHIFT:
        return jnp.zeros_like(q)
    wide = q.astype(jnp.int64) + (1 << (drop - 1))
    return jnp.right_shift(wide, drop).astype(jnp.int32)
