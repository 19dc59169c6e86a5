"""Specification of mpqjax.export.fixed_point: dyadic multipliers, rescaling and exponents in integers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.export import fixed_point


def test_dyadic_multipliers_carry_31_significant_bits():
    values = np.concatenate([np.geomspace(1e-9, 1e6, 200), -np.geomspace(1e-6, 10, 50), [0.0, 1.0, 0.5]])
    multiplier, shift = fixed_point.dyadic(values)
    assert multiplier.dtype == np.int64 and shift.dtype == np.int64
    assert np.all(np.abs(multiplier) < 2 ** 31) and np.all((shift >= 0) & (shift <= 62))
    np.testing.assert_allclose(multiplier / 2.0 ** shift, values, rtol=2.0 ** -30, atol=0)
    assert fixed_point.dyadic([0.0]) == (0, 0)


@pytest.mark.parametrize("bad, message", [([np.inf], "not finite"), ([2.0 ** 32], "does not fit 31 bits")])
def test_dyadic_refuses_what_an_integer_multiplier_cannot_hold(bad, message):
    with pytest.raises(ValueError, match=message):
        fixed_point.dyadic(bad)


def test_rescale_rounds_the_exact_product_to_nearest():
    rng = np.random.default_rng(0)
    q = rng.integers(-(2 ** 30), 2 ** 30, size=4000).astype(np.int32)
    multipliers = np.exp(rng.uniform(-25, 0, size=4000)) * rng.choice([-1, 1], size=4000)
    with jax.enable_x64(True):
        rescaled = np.asarray(fixed_point.rescale(jnp.asarray(q), multipliers))
    exact = q.astype(np.float64) * multipliers
    assert rescaled.dtype == np.int32
    assert np.max(np.abs(rescaled - exact)) <= 0.5 + np.max(np.abs(exact)) * 2.0 ** -29


def test_rescale_saturates_to_int32():
    with jax.enable_x64(True):
        rescaled = np.asarray(fixed_point.rescale(jnp.asarray(np.array([2 ** 30, -(2 ** 30)], np.int32)), 8.0))
    assert rescaled.tolist() == [2 ** 31 - 1, -(2 ** 31) + 1]


def test_exponents_keep_the_bound_below_the_headroom():
    for bound in [1e-12, 1e-3, 0.7, 1.0, 3.0, 1000.0, 2.0 ** 29]:
        exponent = fixed_point.exponent_for(bound)
        assert bound * 2.0 ** exponent < 2.0 ** fixed_point.HEADROOM_BITS or exponent == -fixed_point.MAX_EXPONENT
        assert exponent == fixed_point.MAX_EXPONENT or bound * 2.0 ** (exponent + 1) >= 2.0 ** fixed_point.HEADROOM_BITS
    assert fixed_point.exponent_for(0.0) == fixed_point.MAX_EXPONENT
    with pytest.raises(ValueError, match="finite bound"):
        fixed_point.exponent_for(float("inf"))


def test_changing_the_exponent_rounds_or_shifts_exactly():
    q = np.array([5, -5, 6, -7, 1000], np.int32)
    with jax.enable_x64(True):
        down = np.asarray(fixed_point.shift_exponent(jnp.asarray(q), 10, 8))
        up = np.asarray(fixed_point.shift_exponent(jnp.asarray(q), 8, 10))
    assert down.tolist() == np.floor(q / 4 + 0.5).astype(int).tolist()
    assert up.tolist() == (q * 4).tolist()
