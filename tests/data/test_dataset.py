"""Specification of mpqjax.data.dataset: `Split` and `Dataset`, and `dataset_from_pixels`, which every image loader
uses: a stratified validation split from the training examples, per-channel normalisation with the remaining
training examples' statistics, the test examples whole and in order."""

import numpy as np
import pytest

from mpqjax import data


def test_dataset_built_by_hand_keeps_the_old_constructor():
    split = data.Split(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32))
    dataset = data.Dataset("hand", split, split, split, 3)
    assert dataset.mean is None and dataset.augmentation is None and dataset.input_shape == (4, 4, 1)
    with pytest.raises(ValueError, match="no normalisation statistics"):
        dataset.normalise(np.zeros((1, 4, 4, 1)))


def test_split_needs_a_label_per_example():
    assert len(data.Split(np.zeros((3, 2, 2, 1)), np.zeros(3))) == 3
    with pytest.raises(ValueError, match="as many labels as examples, got 3 and 2"):
        data.Split(np.zeros((3, 2, 2, 1)), np.zeros(2))


@pytest.fixture(scope="module")
def pixels():
    """120 training images of 3 classes (one class of a single image), 30 test images, a constant third channel."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (120, 4, 4, 3), dtype=np.uint8)
    train[..., 2] = 7
    labels = np.concatenate([np.zeros(79), np.ones(40), [2]]).astype(np.int64)
    test = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    return train, labels, test, np.arange(30) % 3


def _build(pixels, seed=0, validation_size=12):
    train, labels, test, test_labels = pixels
    return data.dataset_from_pixels("toy", train, labels, test, test_labels, rng=np.random.default_rng(seed),
                                    validation_size=validation_size, num_classes=3, augmentation="flip")


def test_dataset_from_pixels_holds_out_a_stratified_validation_split(pixels):
    dataset = _build(pixels)
    assert (dataset.name, dataset.num_classes, dataset.augmentation) == ("toy", 3, "flip")
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [108, 12, 30]
    # 12 of 120: quotas 7.9, 4.0 and 0.1 round to 8, 4 and 0 (largest remainders); the single image is allowed.
    np.testing.assert_array_equal(np.bincount(dataset.validation.y, minlength=3), [8, 4, 0])
    assert dataset.train.y.dtype == np.int32 and dataset.validation.x.dtype == np.float32
    np.testing.assert_array_equal(dataset.test.y, pixels[3])  # the test examples whole and in order
    np.testing.assert_array_equal(_build(pixels).validation.x, dataset.validation.x)
    assert not np.array_equal(_build(pixels, seed=1).validation.x, dataset.validation.x)


def test_dataset_from_pixels_normalises_per_channel_with_the_training_split(pixels):
    dataset = _build(pixels)
    train = np.rint(dataset.train.x * dataset.std + dataset.mean).astype(np.uint8)
    expected = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(dataset.mean, expected.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(dataset.std[:2], expected.std(axis=0)[:2], rtol=1e-6)
    assert dataset.std[2] == 1.0 and np.all(dataset.train.x[..., 2] == 0)  # a constant channel: centred, not divided
    np.testing.assert_allclose(dataset.normalise(pixels[2]), dataset.test.x, atol=1e-6)


def test_dataset_from_pixels_checks_the_validation_size(pixels):
    for size in (0, 120, 2.5, True):
        with pytest.raises(ValueError, match=r"validation_size must be an integer in \[1, 119\]"):
            _build(pixels, validation_size=size)


def test_check_count_words_every_loader_s_count_alike():
    data.check_count("threads", 3, 1)
    data.check_count("threads", np.int64(3), 1, 3)
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        data.check_count("threads", 0, 1)
    with pytest.raises(ValueError, match=r"threads must be an integer in \[1, 2\], got 3"):
        data.check_count("threads", 3, 1, 2)
    for value in (True, 2.0, "2"):
        with pytest.raises(ValueError, match="threads must be an integer"):
            data.check_count("threads", value, 1)
