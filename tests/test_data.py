"""Specification of mpqjax.data: fixed, normalised digits splits and batching."""

import jax
import numpy as np
import pytest

from mpqjax import data


@pytest.fixture(scope="module")
def digits():
    return data.load_digits_splits(0)


def test_digits_splits_shapes_and_types(digits):
    assert digits.input_shape == (8, 8, 1) and digits.num_classes == 10
    sizes = [len(digits.train), len(digits.validation), len(digits.test)]
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=1) and sizes[1] == pytest.approx(180, abs=1)
    for split in (digits.train, digits.validation, digits.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32 and split.x.shape[1:] == (8, 8, 1)


def test_splits_are_disjoint_and_stratified(digits):
    def keys(split):
        return {row.tobytes() + bytes([label]) for row, label in zip(split.x, split.y, strict=True)}

    train, validation, test = keys(digits.train), keys(digits.validation), keys(digits.test)
    assert not (train & test) and not (train & validation) and not (validation & test)
    for split in (digits.train, digits.test):
        shares = np.bincount(split.y, minlength=10) / len(split)
        assert np.all(np.abs(shares - 0.1) < 0.02)


def test_normalised_with_training_statistics(digits):
    assert abs(digits.train.x.mean()) < 1e-5 and digits.train.x.std() == pytest.approx(1.0, abs=1e-4)
    assert abs(digits.test.x.mean()) < 0.1


def test_same_seed_same_split_other_seed_other_split(digits):
    again = data.load("digits", seed=0)
    np.testing.assert_array_equal(again.test.x, digits.test.x)
    other = data.load("digits", seed=1)
    assert not np.array_equal(other.test.y, digits.test.y)


def test_unknown_dataset_and_bad_fractions():
    with pytest.raises(ValueError, match="unknown dataset 'cifar99'; available: digits"):
        data.load("cifar99")
    with pytest.raises(ValueError, match="fraction"):
        data.load_digits_splits(0, validation_fraction=0.5, test_fraction=0.6)


def test_batches_cover_an_epoch_once(digits):
    seen = [y for _, y in data.batches(jax.random.key(0), digits.validation, 32)]
    assert all(len(y) == 32 for y in seen) and len(seen) == len(digits.validation) // 32
    everything = np.concatenate([y for _, y in data.batches(None, digits.validation, 32, shuffle=False,
                                                            drop_remainder=False)])
    np.testing.assert_array_equal(everything, digits.validation.y)


def test_shuffle_is_determined_by_the_key(digits):
    first = next(data.batches(jax.random.key(1), digits.train, 16))[1]
    again = next(data.batches(jax.random.key(1), digits.train, 16))[1]
    other = next(data.batches(jax.random.key(2), digits.train, 16))[1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_bad_batch_size(digits):
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(jax.random.key(0), digits.validation, 0))
    with pytest.raises(ValueError, match="exceeds"):
        next(data.batches(jax.random.key(0), digits.validation, 10_000))
