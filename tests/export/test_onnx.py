"""mpqjax.export.onnx: integer JAX programs converted to ONNX run in onnxruntime with JAX's results.

Each test converts a small function ``function(*constants, x)`` and compares onnxruntime's output with JAX's (traced
with 64-bit types, as the converter does): integers exactly, floats to rounding. Results of several operations are
concatenated into one output so that each family costs one compilation.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from mpqjax.export.onnx import run_onnx, to_onnx, write_onnx

INT64 = np.iinfo(np.int64)


def jax_result(function, constants, x):
    """``function(*constants, x)`` computed by JAX with 64-bit types, as a NumPy array."""
    with jax.enable_x64(True):
        return np.asarray(jax.jit(function)(*constants, x))


def assert_same_as_jax(function, constants, x, *, exact=True):
    """Convert ``function``, run it on ``x`` with onnxruntime and compare with JAX; returns the model."""
    model = to_onnx(function, constants, x.shape[1:], input_dtype=x.dtype)
    expected, converted = jax_result(function, constants, x), run_onnx(model, x)
    assert converted.dtype == expected.dtype and converted.shape == expected.shape
    if exact:
        np.testing.assert_array_equal(converted, expected)
    else:
        np.testing.assert_allclose(converted, expected, rtol=1e-5, atol=1e-5)
    return model


def flat(*arrays):
    """One (batch, n) int64 array of each array flattened past the batch axis: several results as one output."""
    return jnp.concatenate([array.reshape(array.shape[0], -1).astype(jnp.int64) for array in arrays], axis=1)


def random_ints(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape, dtype=dtype)


# -- elementwise -----------------------------------------------------------------------------------------------------


def test_float_to_integer_conversion_truncates_and_saturates_like_xla():
    values = [0.0, 2.5, -2.5, 2.7, -2.7, 127.9, -128.9, 300.0, -300.0, 65535.5, 2.0**31, -(2.0**31), 3e9, -3e9,
              2.0**63, -(2.0**64), np.inf, -np.inf, np.nan, 0.49999997]
    x = np.array([values, values[::-1]], np.float32)
    targets = (jnp.int8, jnp.uint8, jnp.int16, jnp.uint16, jnp.int32, jnp.uint32, jnp.int64)
    function = lambda x: flat(*(x.astype(target) for target in targets))
    assert_same_as_jax(function, [], x)


def test_conversions_between_integers_wrap_and_to_float_round():
    x = np.array([[0, 1, -1, 127, 128, -129, 255, 256, 2**31 + 5, -(2**40) - 3, INT64.max, INT64.min]], np.int64)
    function = lambda x: jnp.concatenate([flat(x.astype(jnp.int8), x.astype(jnp.uint8), x.astype(jnp.int32),
                                               x.astype(jnp.bool_)).astype(jnp.float32), x.astype(jnp.float32)], 1)
    assert_same_as_jax(function, [], x)


def test_rounding_floor_and_ceil():
    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 2.4999998, 1e8 + 1, -3.7, 3.2]],
                 np.float32)
    away = lambda x: jax.lax.round(x, jax.lax.RoundingMethod.AWAY_FROM_ZERO)
    function = lambda x: jnp.concatenate([jnp.round(x), away(x), jnp.floor(x), jnp.ceil(x), jnp.abs(x),
                                          jnp.sign(x), -x, jnp.clip(x, -1.0, 2.0)], axis=1)
    assert_same_as_jax(function, [], x)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.int8])
def test_integer_arithmetic_wraps_like_xla(dtype):
    rng = np.random.default_rng(0)
    x = random_ints(rng, (3, 16), dtype)
    other = random_ints(rng, (16,), dtype)
    other[(other == 0) | (other == -1)] = 3  # XLA defines x / 0 and min / -1; onnxruntime faults on them

    def function(other, x):
        divisor = jnp.broadcast_to(other, x.shape)
        return flat(x + other, x - other, x * other, -x, jnp.abs(x), jnp.sign(x), jnp.maximum(x, other),
                    jnp.minimum(x, 7), jax.lax.clamp(dtype(-5), x, dtype(9)), jax.lax.div(x, divisor),
                    jax.lax.rem(x, divisor), jnp.where(x > other, x, other), x.sum(1), x.max(1),
                    x.min(0, keepdims=True) - x)

    assert_same_as_jax(function, [other], x)


def test_comparisons_selection_and_logic():
    rng = np.random.default_rng(1)
    x = rng.integers(-4, 4, (2, 12)).astype(np.int32)
    pivot = rng.integers(-4, 4, (12,)).astype(np.int32)

    def function(pivot, x):
        above, equal = x > pivot, x == pivot
        comparisons = (x == pivot, x != pivot, x >= pivot, x > pivot, x <= pivot, x < pivot)
        logic = (above & equal, above | equal, ~above, above ^ equal, jnp.where(above, x, pivot),
                 jax.lax.select_n(jnp.clip(x, 0, 2), x, jnp.broadcast_to(pivot, x.shape), -x), x & pivot, x | pivot,
                 x ^ pivot, ~x)
        return flat(*comparisons, *logic)

    assert_same_as_jax(function, [pivot], x)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8])
def test_shifts_match_xla_for_negative_values_and_any_amount(dtype):
    info = np.iinfo(dtype)
    values = np.array([0, 1, -1, 5, -5, 100, -100, 127, -128, info.max, info.min, info.max // 3, info.min // 3],
                      dtype)
    bits = info.bits
    amounts = np.array([0, 1, 2, 3, bits - 1, bits, bits + 5, -1, 7], dtype)
    amounts_known = np.array([0, 1, 5, 3, bits - 2, bits, bits + 5, -1, 6], dtype)
    x = np.stack([values, values[::-1]]).astype(dtype)

    def function(amounts, x):  # amounts as a constant (shifted at run time) and known at conversion (folded)
        known = (amounts_known, np.clip(amounts_known, 0, bits - 2))
        grid, shifts = x[:, :, None], (amounts[None, None, :], *(jnp.asarray(each)[None, None, :] for each in known))
        return flat(*(operation(grid, shift) for shift in shifts for operation in (
            jax.lax.shift_right_arithmetic, jax.lax.shift_left, jax.lax.shift_right_logical)))

    assert_same_as_jax(function, [amounts], x)


def test_fixed_point_requantisation_in_int64():
    rng = np.random.default_rng(2)
    accumulators = rng.integers(-(2**24), 2**24, (4, 3, 8)).astype(np.int32)
    multipliers = rng.integers(1, 2**30, 8).astype(np.int64)
    shifts = rng.integers(20, 40, 8).astype(np.int64)
    function = lambda m, k, acc: (acc.astype(jnp.int64) * m + (1 << (k - 1))) >> k
    assert_same_as_jax(function, [multipliers, shifts], accumulators)


# -- contractions ----------------------------------------------------------------------------------------------------


def quantise(x, scale=0.05):
    """float32 -> int8 codes, as the integer programs do at their input."""
    return jnp.clip(jnp.round(x / scale), -128, 127).astype(jnp.int8)


@pytest.mark.parametrize("strides, padding, dilation", [((1, 1), ((1, 1), (1, 1)), (1, 1)),
                                                        ((2, 1), ((0, 2), (1, 0)), (1, 2))])
def test_int8_convolution_accumulates_in_int32(strides, padding, dilation):
    rng = np.random.default_rng(3)
    kernel = random_ints(rng, (3, 3, 3, 5), np.int8)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32) * 4

    def function(kernel, x):
        return jax.lax.conv_general_dilated(quantise(x), kernel, strides, padding, rhs_dilation=dilation,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            preferred_element_type=jnp.int32)

    model = assert_same_as_jax(function, [kernel], x)
    assert "ConvInteger" in {node.op_type for node in model.graph.node}


def test_depthwise_convolution_with_channel_multiplier():
    rng = np.random.default_rng(4)
    kernel = random_ints(rng, (3, 3, 1, 8), np.int8)  # 4 channels, 2 outputs each
    x = rng.normal(size=(2, 5, 5, 4)).astype(np.float32) * 4

    def function(kernel, x):
        return jax.lax.conv_general_dilated(quantise(x), kernel, (2, 2), ((1, 1), (1, 1)), feature_group_count=4,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            preferred_element_type=jnp.int32)

    assert_same_as_jax(function, [kernel], x)


def test_16_bit_convolution_runs_as_byte_convolutions():
    rng = np.random.default_rng(11)
    kernel = random_ints(rng, (2, 2, 3, 4), np.int16)
    x = random_ints(rng, (2, 4, 4, 3), np.int16)

    def function(kernel, x):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            preferred_element_type=jnp.int32)

    assert_same_as_jax(function, [kernel], x)


def test_nchw_and_float_convolutions():
    rng = np.random.default_rng(5)
    int_kernel, float_kernel = random_ints(rng, (4, 2, 2, 2), np.int8), rng.normal(size=(4, 2, 2, 2)).astype(np.float32)
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)

    def function(int_kernel, float_kernel, x):
        integer = jax.lax.conv_general_dilated(quantise(x), int_kernel, (1, 1), "SAME",
                                               preferred_element_type=jnp.int32).astype(jnp.float32)
        return integer + jax.lax.conv_general_dilated(x, float_kernel, (1, 1), "SAME")

    assert_same_as_jax(function, [int_kernel, float_kernel], x, exact=False)


def test_dot_general_forms():
    rng = np.random.default_rng(6)
    kernel, transposed = random_ints(rng, (6, 4), np.int8), random_ints(rng, (4, 6), np.int8)
    wide = rng.integers(-1000, 1000, (6, 3)).astype(np.int32)
    x = rng.normal(size=(3, 2, 6)).astype(np.float32) * 4

    def function(kernel, transposed, wide, x):
        codes = quantise(x)
        int32 = dict(preferred_element_type=jnp.int32)
        dense = jax.lax.dot_general(codes, kernel, (((2,), (0,)), ((), ())), **int32)
        dense_transposed = jax.lax.dot_general(codes, transposed, (((2,), (1,)), ((), ())), **int32)
        batched = jax.lax.dot_general(codes, codes, (((2,), (2,)), ((0,), (0,))), **int32)
        in_int32 = jnp.dot(codes.astype(jnp.int32), wide)
        return flat(dense, dense_transposed, batched, in_int32)

    assert_same_as_jax(function, [kernel, transposed, wide], x)
    weights = rng.normal(size=(6, 4)).astype(np.float32)
    assert_same_as_jax(lambda weights, x: x @ weights, [weights], x, exact=False)


# -- structure, reductions, pooling ----------------------------------------------------------------------------------


def test_shape_operations_keep_the_batch_dynamic():
    rng = np.random.default_rng(7)
    row = rng.integers(-9, 9, (4,)).astype(np.int32)
    x = rng.integers(-100, 100, (2, 3, 4)).astype(np.int32)

    def function(row, x):
        return flat(x.reshape(x.shape[0], 12), x.transpose(0, 2, 1), jnp.broadcast_to(row, x.shape),
                    jnp.zeros((x.shape[0], 2), jnp.int32), jnp.expand_dims(x, 1).squeeze(1), x[:, ::2, 1:4:2],
                    jnp.pad(x, ((0, 0), (1, 2), (0, 0)), constant_values=7),
                    jax.lax.pad(x, jnp.int32(0), [(0, 0, 0), (0, 0, 0), (-1, 1, 0)]),
                    jnp.concatenate([x, -x], axis=2), jnp.arange(12).reshape(3, 4) + x,
                    jnp.arange(x.shape[0])[:, None] + x[:, 0], jnp.copy(x), jax.lax.stop_gradient(x),
                    x.astype(jnp.int8).sum((1, 2)), x.astype(jnp.int16).max(2), x.min(axis=(0,), keepdims=True) + x)

    model = assert_same_as_jax(function, [row], x)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert run_onnx(model, np.tile(x, (3, 1, 1))).shape[0] == 6


def test_static_indexing_with_a_symbolic_batch_becomes_gather():
    rng = np.random.default_rng(10)
    x = rng.integers(-100, 100, (2, 3, 5, 4)).astype(np.int8)

    def function(x):
        return flat(x[:, 0], x[..., :2], x[:, ::2, 1:4:2], x[:, -1, 3], x[:, jnp.array([2, 0, 2])], x[:, 1:, :, 3],
                    x[:, jnp.array([[0, 1], [2, 2]]), 1:3])

    model = assert_same_as_jax(function, [], x)
    assert "Gather" in {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.int16])
def test_pooling_windows(dtype):
    rng = np.random.default_rng(8)
    x = random_ints(rng, (2, 5, 6, 3), dtype)
    lowest, highest = dtype(np.iinfo(dtype).min), dtype(np.iinfo(dtype).max)

    def function(x):
        window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
        return flat(jax.lax.reduce_window(x, lowest, jax.lax.max, window, strides, "VALID"),
                    jax.lax.reduce_window(x, lowest, jax.lax.max, (1, 3, 3, 1), strides, "SAME"),
                    jax.lax.reduce_window(x, highest, jax.lax.min, window, (1, 1, 2, 1), "SAME"),
                    jax.lax.reduce_window(x, dtype(0), jax.lax.add, window, strides, ((0, 0), (1, 0), (0, 1), (0, 0))),
                    jax.lax.reduce_window(x, dtype(3), jax.lax.max, window, strides, "VALID"),  # init is not identity
                    jax.lax.reduce_window(x, dtype(0), jax.lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "VALID",
                                          window_dilation=(1, 2, 2, 1)))

    assert_same_as_jax(function, [], x)


def test_calls_are_inlined():
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 12)
    inner = jax.jit(lambda x: jax.nn.relu(x) * 2)  # jit holding a custom_jvp_call

    @jax.custom_vjp
    def tripled(x):
        return x * 3

    tripled.defvjp(lambda x: (tripled(x), None), lambda _, gradient: (gradient * 3,))
    function = lambda x: jax.checkpoint(lambda x: inner(x) + jax.nn.relu6(x) + tripled(x))(x)
    assert_same_as_jax(function, [], x)


# -- end to end ------------------------------------------------------------------------------------------------------


def integer_cnn(kernel, multipliers, shifts, dense, x):
    """float32 -> int8 codes -> int8 conv (int32) -> per-channel fixed point in int64 -> ReLU -> 2x2 max pool ->
    global sum pool and shift -> int8 dense (int32) -> float32 logits."""
    codes = jnp.clip(jnp.round(x / 0.02), -128, 127).astype(jnp.int8)
    accumulators = jax.lax.conv_general_dilated(codes, kernel, (1, 1), ((1, 1), (1, 1)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                preferred_element_type=jnp.int32)
    scaled = (accumulators.astype(jnp.int64) * multipliers + (1 << (shifts - 1))) >> shifts
    activations = jnp.maximum(jnp.clip(scaled, -128, 127), 0).astype(jnp.int8)
    pooled = jax.lax.reduce_window(activations, jnp.int8(-128), jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    summed = jnp.sum(pooled.astype(jnp.int32), axis=(1, 2)) >> 2
    features = jnp.clip(summed, -128, 127).astype(jnp.int8)
    logits = jax.lax.dot_general(features, dense, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return logits.astype(jnp.float32) * 0.01


def test_integer_cnn_end_to_end_at_two_batch_sizes(tmp_path):
    rng = np.random.default_rng(9)
    constants = [random_ints(rng, (3, 3, 1, 6), np.int8), rng.integers(2**10, 2**14, 6).astype(np.int64),
                 rng.integers(12, 18, 6).astype(np.int64), random_ints(rng, (6, 10), np.int8)]
    path = tmp_path / "cnn.onnx"
    write_onnx(path, integer_cnn, constants, (8, 8, 1))
    assert os.listdir(tmp_path) == ["cnn.onnx"]
    for batch in (1, 5):
        x = rng.normal(size=(batch, 8, 8, 1)).astype(np.float32)
        expected = jax_result(integer_cnn, constants, x)
        converted = run_onnx(path, x)
        assert converted.dtype == np.float32 and converted.shape == (batch, 10)
        np.testing.assert_array_equal(converted, expected)
        assert np.abs(expected).max() > 0  # the test would be vacuous on zero logits
    model = onnx.load(path)
    kernel = next(initializer for initializer in model.graph.initializer if initializer.name == "constant0")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(kernel), constants[0])
    assert [output.name for output in model.graph.output] == ["logits"]


# -- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("function, primitive", [
    (lambda x: jnp.tanh(x), "tanh"),
    (lambda x: jnp.sin(x) + 1, "sin"),
    (lambda x: jnp.take_along_axis(x, (x > 0).astype(jnp.int32), axis=1), "gather.*run time"),
    (lambda x: jax.lax.conv(x.astype(jnp.int32)[:, None], jnp.ones((1, 1, 2), jnp.int32), (1,), "VALID"),
     "conv_general_dilated.*int32"),
    (lambda x: jax.lax.pad(x, jnp.float32(0), [(0, 0, 0), (0, 0, 1)]), "'pad'.*interior"),
    (lambda x: jax.lax.conv_general_dilated(x[:, None], jnp.ones((1, 1, 2), jnp.float32), (1,), [(0, 0)],
                                            lhs_dilation=(2,)), "conv_general_dilated.*lhs_dilation"),
])
def test_unsupported_primitives_raise_value_error_naming_them(function, primitive):
    with pytest.raises(ValueError, match=primitive):
        to_onnx(function, [], (4,))


def test_write_onnx_leaves_nothing_when_the_conversion_or_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match="tanh"):
        write_onnx(path, lambda x: jnp.tanh(x), [], (4,))
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"previous")

    def failing_save(model, name):
        with open(name, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_onnx(path, lambda x: x + 1, [], (4,))
    assert os.listdir(tmp_path) == ["model.onnx"] and path.read_bytes() == b"previous"


def test_missing_packages_say_how_to_install_them(monkeypatch):
    model = to_onnx(lambda x: x + 1, [], (2,))
    for name in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'onnx is needed .*pip install "mpqjax\[onnx\]"'):
        to_onnx(lambda x: x, [], (2,))
    with pytest.raises(ImportError, match=r'onnxruntime is needed .*pip install "mpqjax\[onnx\]"'):
        run_onnx(model, np.zeros((1, 2), np.float32))
