"""Specification of mpqjax.data.augmentation: CIFAR's pad-crop-flip and a random flip, determined by a PRNG key."""

import jax
import numpy as np
import pytest

from mpqjax import data


def test_cifar_augmentation_crops_padded_images_and_flips(pictures, crop_and_flip_of):
    augmented = data.augment(jax.random.key(0), pictures.x, "cifar")
    assert augmented.shape == pictures.x.shape and augmented.dtype == np.float32
    found = [crop_and_flip_of(original, image, 4) for original, image in zip(pictures.x, augmented, strict=True)]
    assert all(match is not None for match in found)
    assert {flipped for _, _, flipped in found} == {False, True}
    assert len({(row, column) for row, column, _ in found}) > 20  # offsets spread over the 9x9 choices


def test_flip_augmentation_flips_or_keeps(pictures):
    augmented = data.augment(jax.random.key(1), pictures.x, "flip")
    flipped = [np.array_equal(image, original[:, ::-1]) for original, image in zip(pictures.x, augmented, strict=True)]
    kept = [np.array_equal(image, original) for original, image in zip(pictures.x, augmented, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 10 < sum(flipped) < 54


def test_augmentation_runs_inside_a_compiled_step(pictures):
    compiled = jax.jit(lambda key, x: data.augment(key, x, "cifar"))
    np.testing.assert_array_equal(compiled(jax.random.key(3), pictures.x),
                                  data.augment(jax.random.key(3), pictures.x, "cifar"))


def test_augmentation_is_determined_by_the_key(pictures):
    first = data.augment(jax.random.key(5), pictures.x, "cifar")
    np.testing.assert_array_equal(first, data.augment(jax.random.key(5), pictures.x, "cifar"))
    assert not np.array_equal(first, data.augment(jax.random.key(6), pictures.x, "cifar"))
    assert data.augment(jax.random.key(5), pictures.x, None) is pictures.x
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        data.augment(jax.random.key(5), pictures.x, "mixup")
    with pytest.raises(ValueError, match=r"needs a batch of images \(N, H, W, C\), got shape \(64, 128\)"):
        data.augment(jax.random.key(5), pictures.x.reshape(64, 128), "flip")


def test_augmenter_continues_one_stream_over_batches(pictures, crop_and_flip_of):
    apply = data.augmenter(jax.random.key(5), "cifar")
    first, second = apply(pictures.x), apply(pictures.x)
    np.testing.assert_array_equal(first, data.augment(jax.random.fold_in(jax.random.key(5), 0), pictures.x, "cifar"))
    np.testing.assert_array_equal(second, data.augment(jax.random.fold_in(jax.random.key(5), 1), pictures.x, "cifar"))
    assert not np.array_equal(first, second)
    assert all(crop_and_flip_of(original, image, 4) is not None
               for original, image in zip(pictures.x, second, strict=True))
    assert data.augmenter(None, None)(pictures.x) is pictures.x
    with pytest.raises(ValueError, match="augmentation 'flip' needs a PRNG key, got None"):
        data.augmenter(None, "flip")
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        data.augmenter(jax.random.key(0), "mixup")
