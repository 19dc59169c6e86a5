"""Specification of mpqjax.data.digits: scikit-learn's digits as fixed, stratified, standardised 8x8x1 splits."""

import numpy as np
import pytest

from mpqjax import data


def test_digits_splits_shapes_and_types(digits):
    assert digits.input_shape == (8, 8, 1) and digits.num_classes == 10
    sizes = [len(digits.train), len(digits.validation), len(digits.test)]
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=1) and sizes[1] == pytest.approx(180, abs=1)
    for split in (digits.train, digits.validation, digits.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32 and split.x.shape[1:] == (8, 8, 1)
    assert digits.augmentation is None


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
    assert digits.mean.shape == (1,) and digits.std.shape == (1,)
    raw_zero = digits.normalise(np.zeros((1, 8, 8, 1)))
    np.testing.assert_allclose(raw_zero, np.full((1, 8, 8, 1), -digits.mean / digits.std))
    assert digits.train.x.min() == pytest.approx(raw_zero.min())  # digits have pixels at 0


def test_same_seed_same_split_other_seed_other_split(digits):
    again = data.load_digits_splits(0)
    np.testing.assert_array_equal(again.test.x, digits.test.x)
    other = data.load_digits_splits(1)
    assert not np.array_equal(other.test.y, digits.test.y)


def test_bad_fractions_and_data_dir_ignored(digits):
    with pytest.raises(ValueError, match="fraction"):
        data.load_digits_splits(0, validation_fraction=0.5, test_fraction=0.6)
    np.testing.assert_array_equal(data.load_digits_splits(0, data_dir="/nowhere").test.y, digits.test.y)
