"""Specification of mpqjax.training.train: float training, calibration, quantisation-aware fine-tune, evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.nn import models, quant
from mpqjax.training import train


@pytest.fixture(scope="module")
def float_mlp(trained_float_mlp):
    """The float MLP trained for 4 epochs (tests/conftest.py), shared by the tests below."""
    return trained_float_mlp(4)


def test_float_training_learns_digits(float_mlp, digits):
    model, variables, losses = float_mlp
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    assert train.evaluate(model, variables, digits.test) > 0.9


def test_training_is_deterministic(float_mlp, digits):
    model, variables, _ = float_mlp
    again, _ = train.train_float(jax.random.key(0), model, digits, epochs=4, learning_rate=1e-2)
    for left, right in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(left, right)


def test_predict_pads_the_last_batch(float_mlp, digits):
    model, variables, _ = float_mlp
    whole = train.predict(model, variables, digits.test.x[:50], batch_size=64)
    pieces = train.predict(model, variables, digits.test.x[:50], batch_size=16)
    np.testing.assert_allclose(whole, pieces, atol=1e-5)


def test_calibration_sets_clips_from_the_inputs(float_mlp, digits):
    float_model, float_variables, _ = float_mlp
    model = models.get("mlp", hidden=(32, 16), widths=(1.0, 1.0, 1.0))
    variables = models.transfer_variables(jax.random.key(1), model, float_model, float_variables)
    x = digits.train.x[:128]
    by_max = train.calibrate(model, variables, x, bits=4, method="max", batch_size=64, num_batches=2)
    expected = np.mean([np.abs(x[:64]).max(), np.abs(x[64:]).max()])  # the first layer sees the (signed) input
    assert float(by_max["quant"]["dense1"]["act_clip"]) == pytest.approx(expected, rel=1e-5)
    by_mse = train.calibrate(model, variables, x, bits=2, method="mse", batch_size=64, num_batches=2)
    assert float(by_mse["quant"]["dense2"]["act_clip"]) < float(by_max["quant"]["dense2"]["act_clip"])
    with pytest.raises(ValueError, match="calibration method"):
        train.calibrate(model, variables, x, method="magic")


def test_finetune_at_four_bits_recovers_and_reuses_one_compilation(float_mlp, masked_mlp, digits, compilations):
    float_model, float_variables, _ = float_mlp
    float_accuracy = train.evaluate(float_model, float_variables, digits.test)
    model = masked_mlp  # every configuration shares the step
    results, programs = {}, []
    for bits, widths in (((4, 4, 4), (1.0, 1.0, 1.0)), ((2, 3, 8), (1.25, 0.75, 1.0))):
        with compilations() as compiled:
            variables, _ = train.finetune(jax.random.key(2), float_model, float_variables, model, digits, bits=bits,
                                          widths=widths, epochs=2)
        results[bits] = train.evaluate(model, variables, digits.test, bits=bits, widths=widths)
        programs.append(compiled)
    assert results[(4, 4, 4)] > float_accuracy - 0.03
    steps = [[name for name in names if "fed_step" in name] for names in programs]
    assert steps[0] == ["jit(fed_step)"] and steps[1] == []  # the second configuration reused the first one's step


@pytest.mark.slow
def test_learned_clips_are_trained(float_mlp, digits):
    float_model, float_variables, _ = float_mlp
    model = models.get("mlp", hidden=(32, 16), widths=(1.0, 1.0, 1.0), act_clipping="pact")
    start = models.transfer_variables(jax.random.key(3), model, float_model, float_variables)
    start = train.calibrate(model, start, digits.train.x, bits=2)
    trained, _ = train.train(jax.random.key(4), model, start, digits, epochs=1, bits=2)
    assert float(trained["params"]["dense2"]["act_clip"]) != float(start["params"]["dense2"]["act_clip"])


def test_config_arrays_broadcast_scalars_and_default_to_float_at_width_one(masked_mlp, digits):
    bits, widths = train.config_arrays(masked_mlp, 4, None, digits.input_shape)
    assert bits.dtype == widths.dtype == np.float32
    assert bits.tolist() == [4, 4, 4] and widths.tolist() == [1, 1, 1]
    bits, widths = train.config_arrays(masked_mlp, None, [1.25, 0.75, 1.0], digits.input_shape)
    assert bits.tolist() == [quant.FLOAT_BITS] * 3 and widths.tolist() == [1.25, 0.75, 1.0]
    with pytest.raises(ValueError, match="bits has 2 entries"):
        train.config_arrays(masked_mlp, [4, 4], None, digits.input_shape)


def test_as_float32_gives_the_one_dtype_of_the_compiled_programs():
    placed = jnp.array([8.0, 4.0])
    assert train.as_float32(placed) is placed  # a float32 device array stays where it is
    for values in ([8, 4], np.array([8, 4], np.int64), jnp.array([8, 4]), (8.0, 4.0)):
        converted = train.as_float32(values)
        assert converted.dtype == np.float32 and np.asarray(converted).tolist() == [8.0, 4.0]


def test_bad_configuration_is_refused_before_training(masked_mlp, digits):
    model = masked_mlp
    variables = models.init_variables(jax.random.key(5), model)
    with pytest.raises(ValueError, match="layer 'dense2': bit-width"):
        train.train(jax.random.key(6), model, variables, digits, epochs=1, bits=jnp.array([4, 1, 4]))
    with pytest.raises(ValueError, match="bits has 2 entries"):
        train.train(jax.random.key(6), model, variables, digits, epochs=1, bits=jnp.array([4, 4]))


@pytest.mark.slow
def test_digits_cnn_float_and_four_bit_accuracy(digits):
    """The issue's figure at test scale: >= 97% float, 4-bit fine-tune within about a point."""
    float_model = models.get("digits_cnn", quantize=False, widths=(1.0,) * 4)
    float_variables, _ = train.train_float(jax.random.key(7), float_model, digits, epochs=15)
    float_accuracy = train.evaluate(float_model, float_variables, digits.test)
    model = models.get("digits_cnn", widths=(1.0,) * 4)
    variables, _ = train.finetune(jax.random.key(8), float_model, float_variables, model, digits, bits=4, epochs=3)
    assert float_accuracy >= 0.97
    assert train.evaluate(model, variables, digits.test, bits=4) >= float_accuracy - 0.015
