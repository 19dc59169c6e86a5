"""Specification of mpqjax.data.batching: one epoch of batches, shuffled and augmented as a PRNG key says."""

import jax
import numpy as np
import pytest

from mpqjax import data


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


def test_batches_augment_each_batch_reproducibly(pictures, crop_and_flip_of):
    epoch = list(data.batches(jax.random.key(7), pictures, 16, augment="cifar"))
    again = list(data.batches(jax.random.key(7), pictures, 16, augment="cifar"))
    assert len(epoch) == 4 and sorted(np.concatenate([y for _, y in epoch])) == list(range(64))
    for (x, y), (x_again, y_again) in zip(epoch, again, strict=True):
        np.testing.assert_array_equal(x, x_again)
        np.testing.assert_array_equal(y, y_again)
        for image, label in zip(x, y, strict=True):
            assert crop_and_flip_of(pictures.x[label], image, 4) is not None
    other = next(data.batches(jax.random.key(8), pictures, 16, augment="cifar"))[0]
    assert not np.array_equal(other, epoch[0][0])
    unshuffled = next(data.batches(jax.random.key(7), pictures, 16, shuffle=False, augment="flip"))
    np.testing.assert_array_equal(unshuffled[1], np.arange(16))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        next(data.batches(None, pictures, 16, shuffle=False, augment="cifar"))
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        next(data.batches(None, pictures, 16, shuffle=False, augment="mixup"))
