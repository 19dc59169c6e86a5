"""Specification of mpqjax.training.population: a population of configurations fine-tuned and evaluated together equals
fine-tuning them one by one, whatever the strategy or the device count; stacked members; scan chunks; bad input."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mpqjax import data
from mpqjax.nn import models
from mpqjax.training import devices, population, train

# Three configurations of a 3-layer MLP: high precision, mixed low precision and widths, near-float.
BITS = np.array([[8, 8, 8], [4, 3, 6], [16, 16, 16]], np.float32)
WIDTHS = np.array([[1, 1, 1], [0.75, 1.25, 1], [1.25, 0.875, 1]], np.float32)
FINETUNE = dict(epochs=1, batch_size=128, learning_rate=1e-3)


@pytest.fixture(scope="module")
def setup(trained_float_mlp, masked_mlp):
    """The float MLP trained for 2 epochs (tests/conftest.py) and the masked model its configurations fine-tune."""
    float_model, float_variables, _ = trained_float_mlp(2)
    return float_model, float_variables, masked_mlp


@pytest.fixture(scope="module")
def one_by_one(setup, digits):
    float_model, float_variables, model = setup
    runs = [train.finetune(jax.random.key(5), float_model, float_variables, model, digits, bits=b, widths=w,
                           **FINETUNE) for b, w in zip(BITS, WIDTHS, strict=True)]
    accuracies = [train.evaluate(model, v, digits.validation, bits=b, widths=w)
                  for (v, _), b, w in zip(runs, BITS, WIDTHS, strict=True)]
    return runs, np.asarray(accuracies)


def test_sequential_is_exactly_the_one_by_one_fine_tune(setup, digits, one_by_one):
    float_model, float_variables, model = setup
    variables, losses = population.finetune(jax.random.key(5), float_model, float_variables, model, digits,
                                            bits=BITS, widths=WIDTHS, strategy="sequential", **FINETUNE)
    runs, _ = one_by_one
    for member, (member_variables, member_losses) in enumerate(runs):
        np.testing.assert_array_equal(losses[member], member_losses)
        for stacked, single in zip(jax.tree.leaves(variables), jax.tree.leaves(member_variables), strict=True):
            np.testing.assert_array_equal(stacked[member], single)


@pytest.mark.parametrize("strategy", ["vmap", "scan"])
def test_vmap_and_scan_match_the_one_by_one_fine_tune(setup, digits, one_by_one, strategy):
    float_model, float_variables, model = setup
    variables, losses = population.finetune(jax.random.key(5), float_model, float_variables, model, digits,
                                            bits=BITS, widths=WIDTHS, strategy=strategy, **FINETUNE)
    runs, accuracies = one_by_one
    assert losses.shape == (3, len(digits.train) // 128)
    reference = np.stack([member_losses for _, member_losses in runs])
    # the first step differs only by float rounding; rounding to quantisation levels can amplify it later
    np.testing.assert_allclose(losses[:, 0], reference[:, 0], rtol=1e-5)
    np.testing.assert_allclose(losses, reference, rtol=2e-2)
    near_float = runs[2][0]  # at 16 bits nothing amplifies: the trained weights agree closely
    for stacked, single in zip(jax.tree.leaves(variables), jax.tree.leaves(near_float), strict=True):
        np.testing.assert_allclose(stacked[2], single, atol=2e-3)
    together = population.evaluate(model, variables, digits.validation, bits=BITS, widths=WIDTHS)
    np.testing.assert_allclose(together, accuracies, atol=2.5 / len(digits.validation))


def test_evaluate_equals_evaluating_each_member(setup, digits, one_by_one):
    _, _, model = setup
    runs, accuracies = one_by_one
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *[variables for variables, _ in runs])
    together = population.evaluate(model, stacked, digits.validation, bits=BITS, widths=WIDTHS, batch_size=64)
    np.testing.assert_allclose(together, accuracies, atol=1e-9)


def test_bits_as_int_lists_int64_or_float32_reach_one_compiled_program(setup, digits, compilations):
    """Calibration and training of a population take bits as they come: a Python int list and an int64 array compile
    nothing more than float32 arrays (each compiled its own statistics and step programs before), same numbers."""
    _, _, model = setup
    mesh = devices.population_mesh()
    stacked = population.stack(models.init_variables(jax.random.key(0), model, digits.input_shape), 2, mesh)
    split = data.Split(digits.train.x[:256], digits.train.y[:256])
    widths = np.ones((2, 3), np.float32)

    def calibrate_and_train(bits):
        calibrated = population.calibrate(model, stacked, split.x, bits=bits, widths=widths, batch_size=128,
                                          num_batches=1, mesh=mesh)
        return population.train_population(jax.random.key(1), model, calibrated, split, bits=bits, widths=widths,
                                           epochs=1, batch_size=128, mesh=mesh)

    reference_variables, reference_losses = calibrate_and_train(np.array([[8, 6, 4], [3, 3, 2]], np.float32))
    forms = ([[8, 6, 4], [3, 3, 2]], np.array([[8, 6, 4], [3, 3, 2]], np.int64))
    with compilations() as compiled:
        results = [calibrate_and_train(bits) for bits in forms]
    assert compiled == []
    for variables, losses in results:
        np.testing.assert_array_equal(losses, reference_losses)
        for left, right in zip(jax.tree.leaves(variables), jax.tree.leaves(reference_variables), strict=True):
            np.testing.assert_array_equal(left, right)


def test_scan_chunks_divide_the_epoch():
    assert population.scan_chunk(19) == 19 and population.scan_chunk(703) == 19 and population.scan_chunk(64) == 32
    assert population.scan_chunk(37) == 1  # a prime above 32: still every step, one at a time


def test_stacked_members_and_their_training_state(setup):
    float_model, float_variables, _ = setup
    mesh = devices.population_mesh()
    stacked = population.stack(float_variables, 3, mesh)
    for leaf, single in zip(jax.tree.leaves(stacked), jax.tree.leaves(float_variables), strict=True):
        assert leaf.shape == (3, *single.shape)
        np.testing.assert_array_equal(leaf[2], single)
    state = population.init_state(stacked, mesh)
    assert state.step.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(jax.tree.leaves(state.params)[0], jax.tree.leaves(stacked["params"])[0])
    assert train.state_variables(state).keys() == stacked.keys()


@pytest.mark.parametrize("bits, widths, message", [
    (np.zeros((0, 3)), np.zeros((0, 3)), r"\[P, L\] array with P >= 1"),
    ([[8, 8, 8], [8, 8]], [[1, 1, 1], [1, 1, 1]], "different lengths"),
    ([[8, 8, 8, 8]], [[1, 1, 1, 1]], "rows have 4 entries, but model 'mlp' has 3"),
    (BITS, WIDTHS[:2], "hold 3 and 2 configurations"),
    ([[8, 8, 40]], [[1, 1, 1]], "bit"),
    ([[8, 8, 8]], [[1, 9, 1]], "width"),
])
def test_bad_populations_are_refused_with_a_clear_message(setup, digits, bits, widths, message):
    float_model, float_variables, model = setup
    with pytest.raises(ValueError, match=message):
        population.finetune(jax.random.key(0), float_model, float_variables, model, digits, bits=bits,
                            widths=widths, **FINETUNE)


def test_a_bad_strategy_is_refused(setup, digits):
    float_model, float_variables, model = setup
    with pytest.raises(ValueError, match="strategy must be one of sequential, vmap, scan"):
        population.check_strategy("pmap")
    with pytest.raises(ValueError, match="strategy must be one of sequential, vmap, scan"):
        population.finetune(jax.random.key(0), float_model, float_variables, model, digits, bits=BITS,
                            widths=WIDTHS, strategy="pmap")


FORCED_DEVICES = textwrap.dedent("""
    import json, jax, numpy as np
    from mpqjax import data
    from mpqjax.nn import models
    from mpqjax.training import devices, population, train
    assert jax.device_count() == 4
    digits = data.load_digits_splits(0)
    float_model = models.get("mlp", hidden=(32, 16), quantize=False, widths=(1.0, 1.0, 1.0))
    float_variables, _ = train.train_float(jax.random.key(0), float_model, digits, epochs=1, learning_rate=1e-2)
    model = models.get("mlp", hidden=(32, 16), max_width=1.25)
    bits = np.array([[8, 8, 8], [4, 3, 6], [16, 16, 16]], np.float32)
    widths = np.array([[1, 1, 1], [0.75, 1.25, 1], [1.25, 0.875, 1]], np.float32)
    out = {}
    for count in (1, 2, 4):
        mesh = devices.population_mesh(jax.devices()[:count])
        variables, losses = population.finetune(jax.random.key(5), float_model, float_variables, model, digits,
                                                bits=bits, widths=widths, epochs=1, batch_size=128, mesh=mesh)
        accuracy = population.evaluate(model, variables, digits.validation, bits=bits, widths=widths, mesh=mesh)
        out[count] = {"losses": losses.tolist(), "accuracy": accuracy.tolist(),
                      "padded": devices.padded_size(3, mesh)}
    mesh = devices.population_mesh()
    placed = population.stack(float_variables, 4, mesh)
    leaf = jax.tree.leaves(placed)[0]
    out["sharding"] = {"devices": len(leaf.sharding.device_set), "spec": list(leaf.sharding.spec),
                       "shard_rows": [shard.data.shape[0] for shard in leaf.addressable_shards]}
    try:  # a population that does not divide over the devices is refused (finetune pads it; this does not)
        three = jax.tree.map(lambda leaf: np.stack([leaf] * 3), float_variables)
        population.train_population(jax.random.key(0), model, three, digits, bits=bits, widths=widths, epochs=1,
                                    batch_size=128, mesh=mesh)
    except ValueError as error:
        out["undivided"] = str(error)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_the_population_axis_shards_over_forced_host_devices_with_the_same_results(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run([sys.executable, "-c", FORCED_DEVICES], env=env, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [out[str(count)]["padded"] for count in (1, 2, 4)] == [3, 4, 4]
    assert out["sharding"] == {"devices": 4, "spec": ["population"], "shard_rows": [1, 1, 1, 1]}
    assert out["undivided"].startswith("population of 3 does not divide over 4 devices; pad it")
    for count in ("2", "4"):  # one device, two and four agree (padding members are dropped)
        np.testing.assert_allclose(out[count]["losses"], out["1"]["losses"], rtol=2e-2)
        np.testing.assert_allclose(out[count]["accuracy"], out["1"]["accuracy"], atol=0.03)
