"""Specification of mpqjax.export.integer: integer codes of weights and activations, and the float kernels they
come back as, against the fake quantiser."""

import jax
import numpy as np
import pytest

from mpqjax import export
from mpqjax.nn import quant


def random_kernel(seed, shape=(3, 3, 5, 6)):
    """A kernel with varied channel ranges, one all-zero channel and one below the quantiser's scale floor."""
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal(shape).astype(np.float32) * np.exp(rng.uniform(-6, 2, shape[-1])).astype(np.float32)
    kernel[..., 0] = 0.0
    kernel[..., 1] *= np.float32(1e-9)
    return kernel


def levels_error(bits):
    """Relative error of the fake quantiser's traced level count against 2^(b-1) - 1 (XLA's exp2: 5e-7 at 14 bits)."""
    exact = 2 ** (bits - 1) - 1
    return abs(float(jax.jit(quant.signed_levels)(np.float32(bits))) - exact) / exact


def runtime_levels_are_exact(bits):
    return levels_error(bits) == 0.0


# One float32 rounding of the scale, carried into weight = code * scale.
ONE_ROUNDING = 2.5e-7


@pytest.mark.parametrize("bits", range(quant.MIN_BITS, quant.PASS_THROUGH_BITS))
def test_integer_weights_times_scale_is_the_fake_quantised_kernel(bits, jitted_quantize_weights):
    for seed in range(3):
        kernel = random_kernel(seed)
        weight, scale = export.integer_weights(kernel, bits)
        assert weight.dtype == (np.int8 if bits <= 8 else np.int16) and weight.shape == kernel.shape
        assert scale.dtype == np.float32 and scale.shape == (kernel.shape[-1],)
        limit = 2 ** (bits - 1) - 1
        assert np.abs(weight.astype(np.int32)).max() == limit  # every channel with a normal range reaches it
        assert np.all(weight[..., 0] == 0)
        dequantised = export.dequantize(weight, scale)
        in_model = np.asarray(jitted_quantize_weights(kernel, np.float32(bits)))
        eager = np.asarray(quant.quantize_weights(kernel, bits))
        if runtime_levels_are_exact(bits):
            np.testing.assert_array_equal(dequantised, in_model)
            np.testing.assert_array_equal(export.integer_weights(in_model, bits)[0], weight)
            # An eager call with a Python int divides by a constant, which XLA turns into a reciprocal multiply.
            np.testing.assert_allclose(dequantised, eager, rtol=ONE_ROUNDING, atol=0)
        else:
            # The quantiser's own scale is off by the level count's error: a code near a half may round the
            # other way (at most one step).
            for other in (in_model, eager):
                assert np.all(np.abs(dequantised - other) <= scale * (1 + 1e-5))


@pytest.mark.parametrize("bits", range(quant.MIN_BITS, quant.PASS_THROUGH_BITS))
def test_requantising_exported_weights_is_idempotent(bits, jitted_quantize_weights):
    """Re-quantising ``q * s`` gives back the same codes; `requantisable_kernel` also gives back the same floats."""
    kernel = random_kernel(10 + bits, shape=(3, 3, 8, 64))
    weight, scale = export.integer_weights(kernel, bits)
    plain = export.dequantize(weight, scale)
    requantised = np.asarray(jitted_quantize_weights(plain, np.float32(bits)))
    np.testing.assert_array_equal(export.integer_weights(requantised, bits)[0], weight)
    np.testing.assert_allclose(requantised, plain, rtol=ONE_ROUNDING + levels_error(bits), atol=0)
    if runtime_levels_are_exact(bits):
        # With an integer level count, fl(fl(L * s) / L) == s: the plain weights are a fixed point.
        np.testing.assert_array_equal(requantised, plain)
    loader_kernel = export.requantisable_kernel(weight, scale, bits)
    assert loader_kernel.dtype == np.float32 and loader_kernel.shape == kernel.shape
    reloaded = np.asarray(jitted_quantize_weights(loader_kernel, np.float32(bits)))
    # A channel under the 1e-8 scale floor (channel 1) gets the quantiser's floored scale back, which carries the
    # level count's error where there is one.
    normal = slice(None) if runtime_levels_are_exact(bits) else slice(2, None)
    np.testing.assert_array_equal(reloaded[..., normal], plain[..., normal])


def test_requantisable_kernel_moves_only_the_codes_at_the_clip():
    bits = 14  # the level count is inexact on CPU here: entries at the clip may move by a few float32 steps
    kernel = random_kernel(7, shape=(3, 3, 4, 16))
    weight, scale = export.integer_weights(kernel, bits)
    plain = export.dequantize(weight, scale)
    loader_kernel = export.requantisable_kernel(weight, scale, bits)
    inside = np.abs(weight.astype(np.int32)) < 2 ** (bits - 1) - 1
    np.testing.assert_array_equal(loader_kernel[inside], plain[inside])
    np.testing.assert_allclose(loader_kernel, plain, rtol=3 * np.finfo(np.float32).eps, atol=0)
    # At 16 bits the fake quantiser passes weights through: the kernel is plainly q * s.
    weight16, scale16 = export.integer_weights(kernel, 16)
    np.testing.assert_array_equal(export.requantisable_kernel(weight16, scale16, 16),
                                  export.dequantize(weight16, scale16))


def test_integer_weights_example_and_bit_range():
    weight, scale = export.integer_weights(np.array([[1.0], [0.4], [-0.6]]), 2)
    assert weight.ravel().tolist() == [1, 0, -1] and scale.tolist() == [1.0]
    assert export.weight_dtype(8) == np.int8 and export.weight_dtype(9) == np.int16
    weight16, scale16 = export.integer_weights(random_kernel(3), 16)
    assert weight16.dtype == np.int16 and np.abs(weight16.astype(np.int32)).max() == 2**15 - 1
    np.testing.assert_allclose(export.dequantize(weight16, scale16), random_kernel(3), rtol=0,
                               atol=float(scale16.max()))
    for bits in (1, 17, 32, 4.5):
        with pytest.raises(ValueError, match="exported weights hold 2 to 16 bits"):
            export.integer_weights(random_kernel(0), bits)
    with pytest.raises(ValueError, match="needs an output-channel axis"):
        export.integer_weights(np.float32(1.0), 4)


@pytest.mark.parametrize("signed", [False, True])
def test_integer_activations_follow_the_fake_quantiser(signed):
    x = np.random.default_rng(4).normal(size=4096).astype(np.float32) * 2
    for bits in (2, 3, 8):
        codes, step = export.integer_activations(x, bits, 1.5, signed=signed)
        levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        assert codes.min() == (-levels if signed else 0) and codes.max() == levels
        assert step == export.activation_scale(1.5, bits, signed=signed) == np.float32(np.float32(1.5) / levels)
        expected = np.asarray(quant.quantize_activations(x, bits, 1.5, signed=signed))
        np.testing.assert_allclose(codes * step, expected, rtol=0, atol=1e-6)
    codes, step = export.integer_activations(np.array([0.2, 0.5, 1.7]), 2, 1.5, signed=False)
    assert codes.tolist() == [0, 1, 3] and float(step) == 0.5
    # A clip of zero (a dead input) is floored like the fake quantiser's, so the step is never zero.
    assert export.activation_scale(0.0, 4, signed=False) == np.float32(np.float32(1e-8) / 15)
    with pytest.raises(ValueError, match="exported weights hold 2 to 16 bits"):
        export.integer_activations(x, 1, 1.5, signed=False)
