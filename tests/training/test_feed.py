"""Specification of mpqjax.training.feed: a run's batches laid out once and gathered on the device by its steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax import data
from mpqjax.nn import models
from mpqjax.training import feed, train


@pytest.fixture(scope="module")
def pictures():
    """100 tiny images with CIFAR-style augmentation."""
    rng = np.random.default_rng(0)
    split = data.Split(rng.standard_normal((100, 6, 6, 2)).astype(np.float32), np.arange(100, dtype=np.int32) % 3)
    return data.Dataset("pictures", split, split, split, 3, augmentation="cifar")


@pytest.mark.parametrize("augmented", [False, True])
def test_the_steps_take_the_batches_of_data_batches_with_the_same_epoch_keys(pictures, augmented):
    dataset = pictures if augmented else data.Dataset("plain", pictures.train, pictures.train, pictures.train, 3)
    key = jax.random.key(7)
    run = feed.plan(key, dataset, epochs=3, batch_size=16, learning_rate=1e-3)
    expected = [batch for epoch_key in jax.random.split(key, 3)
                for batch in data.batches(epoch_key, dataset.train, 16, augment=dataset.augmentation)]
    assert run.steps == len(expected) == 3 * (100 // 16)  # the last incomplete batch of each epoch is dropped
    gather = jax.jit(lambda step: feed.batch(run, step, dataset.augmentation))
    for step, (x, y) in enumerate(expected):
        got_x, got_y, rate = gather(step)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
        assert float(rate) == np.float32(feed.one_cycle(step, run.steps, 1e-3))


def test_one_cycle_rises_to_its_peak_then_decays():
    rates = [feed.one_cycle(step, 100, 0.01) for step in range(101)]
    assert rates[0] == pytest.approx(0.01 / 25) and max(rates) == pytest.approx(0.01)
    assert rates[-1] == pytest.approx(0.01 / 1e4) and int(np.argmax(rates)) == 30


def test_learning_rates_follow_the_batch_size_as_asked():
    assert feed.scaled_learning_rate(1e-3, 1024, "none") == 1e-3
    assert feed.scaled_learning_rate(1e-3, 1024, "linear") == pytest.approx(16e-3)
    assert feed.scaled_learning_rate(1e-3, 1024, "sqrt") == pytest.approx(4e-3)
    assert feed.scaled_learning_rate(1e-3, 16, "sqrt") == pytest.approx(0.5e-3)
    with pytest.raises(ValueError, match="learning-rate scaling must be one of none, linear, sqrt, got 'cube'"):
        feed.scaled_learning_rate(1e-3, 64, "cube")


def test_examples_already_on_the_device_are_used_in_place(pictures):
    placed = pictures.on_device()
    run = feed.plan(jax.random.key(0), placed, epochs=1, batch_size=10, learning_rate=1e-3)
    assert run.x is placed.train.x and run.y is placed.train.y
    assert isinstance(feed.plan(jax.random.key(0), pictures, epochs=1, batch_size=10, learning_rate=1e-3).x,
                      jax.Array)


def test_a_run_sends_nothing_to_the_device_step_after_step(digits):
    model = models.get("mlp", hidden=(8,), input_shape=digits.input_shape)
    variables = models.init_variables(jax.random.key(0), model, digits.input_shape)
    run = feed.plan(jax.random.key(0), digits.on_device(), epochs=1, batch_size=64, learning_rate=1e-3)
    bits, widths = train.config_arrays(model, 4, 1.0, digits.input_shape)
    step = train.training_step(model, None)
    state, decay = train.init_state(variables), jnp.float32(1e-4)
    state, first = step(state, run, bits, widths, decay)
    losses = [first]
    with jax.transfer_guard("disallow"):  # any host-to-device (or back) transfer raises
        for _ in range(run.steps - 1):
            state, loss = step(state, run, bits, widths, decay)
            losses.append(loss)
    assert int(state.step) == run.steps
    _, reference = train.train(jax.random.key(0), model, variables, digits, epochs=1, learning_rate=1e-3, bits=4)
    np.testing.assert_array_equal(np.asarray(jnp.stack(losses)), reference)


def test_training_on_host_or_placed_examples_is_the_same(digits):
    model = models.get("mlp", hidden=(8,), input_shape=digits.input_shape)
    variables = models.init_variables(jax.random.key(0), model, digits.input_shape)
    on_host = train.train(jax.random.key(3), model, variables, digits, epochs=1, bits=3)
    placed = train.train(jax.random.key(3), model, variables, digits.on_device(), epochs=1, bits=3)
    np.testing.assert_array_equal(on_host[1], placed[1])
    for left, right in zip(jax.tree.leaves(on_host[0]), jax.tree.leaves(placed[0]), strict=True):
        np.testing.assert_array_equal(left, right)


def test_bad_plans_are_refused(pictures):
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 100\] \(the training examples\), got 101"):
        feed.plan(jax.random.key(0), pictures, epochs=1, batch_size=101, learning_rate=1e-3)
    with pytest.raises(ValueError, match="batch_size must be in"):
        feed.plan(jax.random.key(0), pictures, epochs=1, batch_size=0, learning_rate=1e-3)
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        feed.plan(jax.random.key(0), pictures, epochs=0, batch_size=10, learning_rate=1e-3)
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        feed.batch(feed.plan(jax.random.key(0), pictures, epochs=1, batch_size=10, learning_rate=1e-3), 0, "mixup")
