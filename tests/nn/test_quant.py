"""Specification of mpqjax.nn.quant: uniform fake-quantisation with a straight-through estimator and traced bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.nn import quant

BITS = (2, 3, 4, 6, 8)


def nearest_level(values, levels):
    """Reference: the nearest element of an explicit level set (inputs avoid exact midpoints)."""
    values = np.asarray(values, np.float64)
    return levels[np.argmin(np.abs(values[:, None] - levels[None, :]), axis=1)]


def off_midpoint_grid(low, high, count=97):
    # An irrational offset keeps every sample away from the midpoints between levels.
    return np.linspace(low, high, count) + np.sqrt(2) * 1e-4


def test_weight_rounding_tables_by_hand():
    column = jnp.array([[1.0], [0.4], [0.6], [-0.2], [-0.7], [0.1]])
    assert quant.quantize_weights(column, 2).ravel().tolist() == [1.0, 0.0, 1.0, 0.0, -1.0, 0.0]
    three_bit = np.asarray(quant.quantize_weights(column, 3)).ravel()  # levels k/3, k = -3..3
    np.testing.assert_allclose(three_bit, [1.0, 1 / 3, 2 / 3, -1 / 3, -2 / 3, 0.0], rtol=1e-6)


def test_level_counts_are_exact_integers_at_every_quantising_bit_width():
    # float32 exp2 alone gives 2^13 = 8192.004: the level counts must be exact for the grid to be right
    bits = np.arange(quant.MIN_BITS, quant.PASS_THROUGH_BITS)
    for levels in (quant.signed_levels, jax.jit(quant.signed_levels)):
        assert np.asarray(levels(jnp.asarray(bits, jnp.float32))).tolist() == (2.0 ** (bits - 1) - 1).tolist()
    for levels in (quant.unsigned_levels, jax.jit(quant.unsigned_levels)):
        assert np.asarray(levels(jnp.asarray(bits, jnp.float32))).tolist() == (2.0 ** bits - 1).tolist()


@pytest.mark.parametrize("bits", BITS)
def test_weights_round_to_nearest_symmetric_level_per_output_channel(bits):
    grid = off_midpoint_grid(-0.99, 0.99)
    kernel = np.stack([grid, 0.25 * grid], axis=-1).astype(np.float32)  # two output channels, two scales
    kernel[0, 0], kernel[0, 1] = -1.0, -0.25  # the max |w| of each channel sits on the top level
    result = np.asarray(quant.quantize_weights(jnp.asarray(kernel), bits))
    positive = 2 ** (bits - 1) - 1
    for channel, max_abs in enumerate((1.0, 0.25)):
        levels = np.arange(-positive, positive + 1) * max_abs / positive
        np.testing.assert_allclose(result[:, channel], nearest_level(kernel[:, channel], levels), atol=1e-6)
        assert len(np.unique(np.round(result[:, channel], 6))) <= 2 * positive + 1


@pytest.mark.parametrize("bits", BITS)
def test_unsigned_and_signed_activation_tables(bits):
    clip = 2.0
    values = off_midpoint_grid(-3.0, 3.0)
    unsigned = np.asarray(quant.quantize_activations(jnp.asarray(values, jnp.float32), bits, clip, signed=False))
    steps = 2**bits - 1
    expected = nearest_level(np.clip(values, 0, clip), np.arange(steps + 1) * clip / steps)
    np.testing.assert_allclose(unsigned, expected, atol=1e-6)
    signed = np.asarray(quant.quantize_activations(jnp.asarray(values, jnp.float32), bits, clip, signed=True))
    positive = 2 ** (bits - 1) - 1
    expected = nearest_level(np.clip(values, -clip, clip), np.arange(-positive, positive + 1) * clip / positive)
    np.testing.assert_allclose(signed, expected, atol=1e-6)


def test_ties_round_to_even():
    # 0.5 and 1.5 steps of 1/3 at 3 bits: round-half-to-even gives 0 and 2 steps.
    values = jnp.array([0.5 / 3, 1.5 / 3]).reshape(2, 1)
    kernel = jnp.concatenate([values, jnp.array([[1.0]])])
    np.testing.assert_allclose(np.asarray(quant.quantize_weights(kernel, 3)).ravel()[:2], [0.0, 2 / 3], atol=1e-6)


@pytest.mark.parametrize("bits", (16, 24, quant.FLOAT_BITS))
def test_sixteen_bits_and_above_pass_through(bits):
    x = jax.random.normal(jax.random.key(0), (5, 3)) * 3
    assert np.array_equal(quant.quantize_weights(x, bits), x)
    assert np.array_equal(quant.quantize_activations(x, bits, 1.0, signed=True), x)


def test_all_zero_channel_stays_zero():
    kernel = jnp.zeros((3, 2)).at[:, 1].set(jnp.array([0.5, -1.0, 0.2]))
    result = quant.quantize_weights(kernel, 4)
    assert np.all(np.isfinite(result)) and np.all(result[:, 0] == 0)


def test_weight_gradient_is_the_identity_even_at_each_channels_largest_weight():
    kernel = jax.random.normal(jax.random.key(1), (64, 32))
    cotangent = np.asarray(jax.random.normal(jax.random.key(2), (64, 32)))
    for bits in BITS:
        eager = jax.grad(lambda w, b=bits: jnp.sum(quant.quantize_weights(w, b) * cotangent))(kernel)
        # compiled with traced bits (as in training): the division may round differently, the gradient does not
        compiled = jax.jit(jax.grad(lambda w, b: jnp.sum(quant.quantize_weights(w, b) * cotangent)))(
            kernel, np.float32(bits))
        for grad in (eager, compiled):
            np.testing.assert_array_equal(grad, cotangent)  # exactly the identity


def test_weight_gradient_at_an_exact_bound_is_one_and_exactly_the_identity_when_passing_through():
    # 2 bits: one level each side, so a power-of-two max |w| is its own scale and u = +-1 exactly, compiled or not
    kernel = jnp.array([[1.0, -0.25], [0.3, 0.1], [-0.6, 0.2]])
    for grad_fn in (jax.grad(lambda w, b: jnp.sum(quant.quantize_weights(w, b))),
                    jax.jit(jax.grad(lambda w, b: jnp.sum(quant.quantize_weights(w, b))))):
        np.testing.assert_array_equal(grad_fn(kernel, np.float32(2)), np.ones((3, 2)))
        np.testing.assert_array_equal(grad_fn(kernel, np.float32(16)), np.ones((3, 2)))  # exactly the identity


def test_activation_gradient_on_the_clipping_bounds_is_one_half():
    x = jnp.array([-1.0, 0.0, 0.5, 1.0])
    grad = jax.grad(lambda v: jnp.sum(quant.quantize_activations(v, 3, 1.0, signed=True)))(x)
    np.testing.assert_array_equal(grad, [0.5, 1.0, 1.0, 0.5])
    grad = jax.grad(lambda v: jnp.sum(quant.quantize_activations(v, 3, 1.0, signed=False)))(x)
    np.testing.assert_array_equal(grad, [0.0, 0.5, 1.0, 0.5])


def test_bits_as_int_int64_or_float32_give_the_same_values_and_operations(compilations):
    kernel = jax.random.normal(jax.random.key(5), (6, 4))
    x = jax.random.uniform(jax.random.key(6), (10, 3), maxval=1.2)

    def quantize_all(bits):
        return (quant.quantize_weights(kernel, bits), quant.quantize_activations(x, bits, 1.0, signed=False),
                quant.calibration_stats(x, bits, signed=False))

    reference = quantize_all(np.float32(3))
    forms = (3, np.int64(3), np.array(3, np.int32))
    with compilations() as compiled:
        results = [quantize_all(bits) for bits in forms]
    assert compiled == []  # every form runs the float32 form's (eager) operations
    for result in results:
        for left, right in zip(result, reference, strict=True):
            np.testing.assert_array_equal(left, right)


@pytest.mark.parametrize("mode", quant.CLIPPING_MODES)
def test_activation_gradient_passes_inside_range_only(mode):
    x = jnp.array([-3.0, -0.7, 0.3, 0.9, 2.5])
    grad = jax.grad(lambda v: jnp.sum(quant.quantize_activations(v, 3, 1.0, signed=True, mode=mode)))(x)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 1.0, 0.0])
    grad = jax.grad(lambda v: jnp.sum(quant.quantize_activations(v, 3, 1.0, signed=False, mode=mode)))(x)
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, 1.0, 0.0])


def test_clip_gradient_calibrated_pact_and_lsq():
    x = jnp.array([0.3, 0.55, 2.0, 3.0])
    bits, clip = 2, 1.5  # unsigned: step 0.5

    def clip_grad(mode):
        return float(jax.grad(lambda c: jnp.sum(quant.quantize_activations(x, bits, c, signed=False, mode=mode)))(clip))

    assert clip_grad("calibrated") == 0.0
    assert clip_grad("pact") == pytest.approx(2.0)  # two values clipped above
    # LSQ adds (round(u) - u) / levels inside the range: u = 0.6 -> 0.4, u = 1.1 -> -0.1; levels = 3.
    assert clip_grad("lsq") == pytest.approx(2.0 + (0.4 - 0.1) / 3, abs=1e-5)


def test_traced_bits_one_compilation_under_jit_and_vmap():
    traces = []

    def quantize_both(bits, kernel, x):
        traces.append(1)
        return quant.quantize_weights(kernel, bits), quant.quantize_activations(x, bits, 1.0, signed=False)

    kernel = jax.random.normal(jax.random.key(3), (6, 4))
    x = jax.random.uniform(jax.random.key(4), (10,), maxval=1.2)
    batched = jax.jit(jax.vmap(quantize_both, in_axes=(0, None, None)))
    weights, activations = batched(jnp.array(BITS), kernel, x)
    batched(jnp.array([8, 6, 4, 3, 2]), kernel, x)
    assert len(traces) == 1
    for row, bits in enumerate(BITS):
        np.testing.assert_allclose(weights[row], quant.quantize_weights(kernel, bits), atol=1e-6)
        np.testing.assert_allclose(activations[row], quant.quantize_activations(x, bits, 1.0, signed=False), atol=1e-6)


def test_unknown_clipping_mode():
    with pytest.raises(ValueError, match="clipping mode"):
        quant.quantize_activations(jnp.ones(3), 4, 1.0, signed=False, mode="magic")


def test_calibration_stats_against_numpy():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(64, 8)), 0).astype(np.float32)
    x[0, 0] = 9.0  # an outlier: max and percentile part ways
    stats = np.asarray(quant.calibration_stats(jnp.asarray(x), 3, signed=False, percentile=99.0))
    assert stats[0] == pytest.approx(9.0)
    values = np.sort(x.ravel())
    assert values[int(np.ceil(0.99 * values.size)) - 1] <= stats[1] <= values[int(np.ceil(0.99 * values.size))]
    candidates = 9.0 * np.arange(1, 65) / 64
    errors = [np.sum((np.asarray(quant.quantize_activations(jnp.asarray(values), 3, c, signed=False)) - values) ** 2)
              for c in candidates]
    assert stats[2] == pytest.approx(candidates[int(np.argmin(errors))], rel=1e-5)
    assert stats[2] < stats[0]


def test_calibration_stats_ignore_masked_channels():
    x = jnp.concatenate([jnp.full((4, 2), 0.5), jnp.full((4, 1), 7.0)], axis=-1)
    stats = quant.calibration_stats(x, 4, signed=True, channel_mask=jnp.array([True, True, False]))
    assert float(stats[0]) == pytest.approx(0.5) and float(stats[1]) == pytest.approx(0.5)


def test_values_are_exactly_codes_times_step_in_any_compiled_program():
    """No fused multiply-add can move a quantised activation off its grid: jitted, or exported with a symbolic batch
    (as `mpqjax.export.export_program` does), the values equal NumPy's ``round(x / step) * step`` bit for bit (the
    weights' quantiser is built the same way)."""
    x = np.random.default_rng(0).uniform(-0.5, 3.0, size=(16, 256)).astype(np.float32)
    clip = np.float32(2.5)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 256"), jnp.float32)
    for bits in (3, 8):
        step = np.float32(clip / np.float32(2**bits - 1))
        expected = (np.round(np.clip(x, 0, clip) / step) * step).astype(np.float32)
        activations = jax.jit(lambda v, b=bits: quant.quantize_activations(v, b, clip, signed=False))
        np.testing.assert_array_equal(activations(x), expected)
        np.testing.assert_array_equal(jax.export.export(activations)(spec).call(x), expected)
