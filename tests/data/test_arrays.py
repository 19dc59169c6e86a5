"""Specification of mpqjax.data.arrays: `from_arrays` turns a user's own (x, y) arrays into a `Dataset`: float32
examples of any shape and int32 labels, a stratified validation split carved from train (fixed by the seed) unless
one is given, optional per-channel normalisation with the training statistics, and a one-line error for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mpqjax import data


def _features(count, classes, width=3, seed=0):
    """(x, y): flat features whose first column numbers the examples, labels cycling over ``classes``."""
    x = np.random.default_rng(seed).normal(size=(count, width))
    x[:, 0] = np.arange(count)
    return x, np.arange(count) % classes


@pytest.fixture(scope="module")
def digits_features():
    """scikit-learn's digits as flat (N, 64) features, split 80/20 stratified into train and test."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return (x_train, y_train), (x_test, y_test)


def test_shapes_dtypes_and_splits_of_flat_features(digits_features):
    train, test = digits_features
    dataset = data.from_arrays(train=train, test=test, name="my digits")
    assert (dataset.name, dataset.num_classes, dataset.input_shape) == ("my digits", 10, (64,))
    assert dataset.mean is None and dataset.std is None and dataset.augmentation is None
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [1293, 144, 360]  # 10% of 1437
    for split in (dataset.train, dataset.validation, dataset.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32 and split.x.flags.c_contiguous
    np.testing.assert_array_equal(dataset.test.x, test[0])  # values unchanged, test whole and in order
    np.testing.assert_array_equal(dataset.test.y, test[1])


def test_validation_is_carved_from_train_keeping_every_example_once():
    x, y = _features(50, 5)
    dataset = data.from_arrays(train=(x, y), test=(x[:5], y[:5]), validation_size=10)
    train_ids, validation_ids = dataset.train.x[:, 0], dataset.validation.x[:, 0]
    assert len(validation_ids) == 10 and np.all(np.diff(train_ids) > 0) and np.all(np.diff(validation_ids) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, validation_ids])), np.arange(50))
    np.testing.assert_array_equal(dataset.validation.y, y[validation_ids.astype(int)])  # labels follow examples
    np.testing.assert_array_equal(dataset.validation.x, x[validation_ids.astype(int)].astype(np.float32))


@pytest.mark.parametrize("validation_size", [20, 0.1])
def test_validation_split_is_stratified_by_class(validation_size):
    y = np.repeat([0, 1, 2], [100, 60, 40])
    x = np.random.default_rng(0).normal(size=(200, 2))
    dataset = data.from_arrays(train=(x, y), test=(x[:3], y[:3]), validation_size=validation_size)
    np.testing.assert_array_equal(np.bincount(dataset.validation.y, minlength=3), [10, 6, 4])
    np.testing.assert_array_equal(np.bincount(dataset.train.y, minlength=3), [90, 54, 36])


def test_default_validation_is_a_tenth_but_covers_every_class_of_small_data():
    x, y = _features(300, 10)
    np.testing.assert_array_equal(np.bincount(data.from_arrays(train=(x, y), test=(x, y)).validation.y), [3] * 10)
    x, y = _features(30, 10)  # a tenth would be 3 examples for 10 classes: one per class instead
    np.testing.assert_array_equal(np.bincount(data.from_arrays(train=(x, y), test=(x, y)).validation.y), [1] * 10)


def test_the_seed_fixes_the_split():
    x, y = _features(60, 3)

    def validation_ids(seed):
        return data.from_arrays(train=(x, y), test=(x, y), seed=seed).validation.x[:, 0]

    np.testing.assert_array_equal(validation_ids(0), validation_ids(0))
    assert not np.array_equal(validation_ids(0), validation_ids(1))


def test_a_given_validation_split_is_kept_whole_and_in_order():
    x, y = _features(20, 4)
    dataset = data.from_arrays(train=(x[:12], y[:12]), validation=(x[12:16], y[12:16]), test=(x[16:], y[16:]))
    np.testing.assert_array_equal(dataset.train.x, x[:12].astype(np.float32))
    np.testing.assert_array_equal(dataset.validation.x, x[12:16].astype(np.float32))
    np.testing.assert_array_equal(dataset.validation.y, y[12:16])


def test_num_classes_defaults_to_the_largest_label_of_any_split_plus_one():
    x, y = _features(20, 3)
    assert data.from_arrays(train=(x, y), test=(x[:1], [7])).num_classes == 8
    assert data.from_arrays(train=(x, y), test=(x, y), num_classes=5).num_classes == 5


def test_accepts_jax_arrays_lists_uint8_images_and_integral_float_labels():
    images = np.random.default_rng(0).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(12) % 2
    dataset = data.from_arrays(train=(jnp.asarray(images), labels.astype(np.float64)),
                               test=[images[:2].tolist(), jnp.asarray([0, 1])], validation_size=2)
    assert dataset.input_shape == (4, 4, 3) and dataset.train.y.dtype == np.int32 and dataset.num_classes == 2
    np.testing.assert_array_equal(dataset.test.x, images[:2].astype(np.float32))
    np.testing.assert_array_equal(np.sort(np.concatenate([dataset.train.y, dataset.validation.y])), np.sort(labels))


def test_the_dataset_does_not_share_memory_with_the_caller_s_arrays():
    x, y = _features(10, 2)
    x = x.astype(np.float32)
    dataset = data.from_arrays(train=(x, y), test=(x, y))
    x[:] = 0
    assert np.any(dataset.test.x != 0)


def test_normalise_uses_the_per_channel_statistics_of_the_remaining_training_examples():
    rng = np.random.default_rng(0)
    images = rng.normal(loc=[3.0, -2.0, 5.0], scale=[2.0, 0.5, 1.0], size=(40, 4, 4, 3))
    images[..., 2] = 5.0  # a constant channel
    labels = np.arange(40) % 4
    test = rng.normal(size=(6, 4, 4, 3))
    options = dict(train=(images, labels), test=(test, labels[:6]), validation_size=8, seed=3)
    plain, normalised = data.from_arrays(**options), data.from_arrays(**options, normalise=True)
    raw = plain.train.x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(normalised.mean[:2], raw.mean(axis=0)[:2], rtol=1e-6)
    np.testing.assert_allclose(normalised.std[:2], raw.std(axis=0)[:2], rtol=1e-6)
    assert normalised.mean[2] == 5.0 and normalised.std[2] == 1.0 and np.all(normalised.train.x[..., 2] == 0)
    standardised = normalised.train.x.reshape(-1, 3)
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(standardised.std(axis=0)[:2], 1, rtol=1e-5)
    for mine, theirs in ((normalised.validation, plain.validation), (normalised.test, plain.test)):
        np.testing.assert_allclose(mine.x, (theirs.x - normalised.mean) / normalised.std, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(mine.y, theirs.y)
    np.testing.assert_allclose(normalised.normalise(test), normalised.test.x, atol=1e-6)


def test_augmentation_is_checked_and_recorded():
    images, labels = np.zeros((10, 8, 8, 1)), np.arange(10) % 2
    assert data.from_arrays(train=(images, labels), test=(images, labels), augmentation="flip").augmentation == "flip"
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'; available: cifar, flip"):
        data.from_arrays(train=(images, labels), test=(images, labels), augmentation="rotate")
    flat = images.reshape(10, 64)
    with pytest.raises(ValueError, match=r"augmentation 'cifar' needs images \(N, H, W, C\), got .* \(64,\)"):
        data.from_arrays(train=(flat, labels), test=(flat, labels), augmentation="cifar")


def test_a_dataset_from_flat_digits_features_trains_an_mlp(digits_features):
    from mpqjax.nn import models
    from mpqjax.training.train import predict, train_float

    train, test = digits_features
    dataset = data.from_arrays(train=train, test=test, normalise=True)
    model = models.get("mlp", quantize=False, widths=(1.0, 1.0, 1.0), num_classes=10)
    variables, losses = train_float(jax.random.key(0), model, dataset, epochs=2)
    assert len(losses) == 2 * (len(dataset.train) // 64) and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean()
    accuracy = np.mean(predict(model, variables, dataset.test.x).argmax(axis=1) == dataset.test.y)
    assert accuracy > 0.7


X, Y = _features(20, 4)
BAD_INPUTS = [
    (dict(train=X), r"train must be an \(x, y\) pair, got ndarray"),
    (dict(train=(X, Y, Y)), r"train must be an \(x, y\) pair, got tuple of length 3"),
    (dict(test=(X, Y[:-1])), "test: x has 20 examples but y has 19 labels"),
    (dict(train=(X, np.eye(4)[Y])), r"train: y must be 1-D integer labels \(N,\), got shape \(20, 4\) \(one-hot"),
    (dict(test=(X, Y[:, None])), r"test: y must be 1-D integer labels \(N,\), got shape \(20, 1\) \(a column: pass y"),
    (dict(train=(X, Y + 0.5)), "train: y must hold integer labels, got 0.5"),
    (dict(train=(X, Y.astype(str))), "train: y must hold integer labels, got dtype <U"),
    (dict(test=(X, Y - 1)), "test: y has a negative label -1"),
    (dict(validation=(X, Y + 1), num_classes=4), r"validation: y has label 4, but num_classes is 4 \(labels must be"),
    (dict(num_classes=0), r"num_classes must be an integer >= 1, got 0"),
    (dict(test=(X[:, :2], Y)), r"test: examples have shape \(2,\) but train's have \(3,\)"),
    (dict(validation=(X.reshape(20, 3, 1), Y)), r"validation: examples have shape \(3, 1\) but train's have \(3,\)"),
    (dict(test=(X[:0], Y[:0])), "test is empty"),
    (dict(train=(np.where(X > 1, np.nan, X), Y)), r"train: x has \d+ non-finite values"),
    (dict(test=(X * 1e300, Y)), r"test: x has \d+ non-finite values .*beyond float32"),
    (dict(train=(X[:, 0], Y)), "train: x must have shape .* at least one feature axis, got"),
    (dict(train=(X.astype(str), Y)), "train: x must hold real numbers, got dtype <U"),
    (dict(train=([[1.0], [1.0, 2.0]], [0, 1])), "train: x is not an array"),
    (dict(validation_size=20), "validation_size 20 leaves no training examples: train has 20"),
    (dict(validation_size=0.99), "validation_size 0.99 leaves no training examples: train has 20"),
    (dict(validation_size=0), "validation_size must be positive, got 0"),
    (dict(validation_size=1.5), r"validation_size as a fraction must be in \(0, 1\), got 1.5"),
    (dict(validation_size=-0.1), r"validation_size as a fraction must be in \(0, 1\), got -0.1"),
    (dict(validation_size=True), "validation_size must be an int count or a float fraction, got True"),
    (dict(validation=(X, Y), validation_size=5), "give validation or validation_size, not both"),
    (dict(train=(X[:1], Y[:1])), "train: a single example leaves none to hold out for validation"),
]


@pytest.mark.parametrize("options, message", BAD_INPUTS, ids=[message[:40] for _, message in BAD_INPUTS])
def test_bad_input_is_refused_with_a_one_line_message(options, message):
    options = {"train": (X, Y), "test": (X, Y)} | options
    with pytest.raises(ValueError, match=message) as error:
        data.from_arrays(**options)
    assert "\n" not in str(error.value)
