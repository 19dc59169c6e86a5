"""Fixtures shared by the specifications of mpqjax.data's modules: the digits, a batch of pictures whose labels name
them, and helpers that trace a normalised split back to the raw images it came from."""

import contextlib
from unittest import mock

import numpy as np
import pytest

from mpqjax import data


@pytest.fixture(scope="session")
def digits():
    return data.load_digits_splits(0)


@pytest.fixture(scope="session")
def pictures():
    x = np.random.default_rng(3).normal(size=(64, 8, 8, 2)).astype(np.float32)
    return data.Split(x, np.arange(64, dtype=np.int32))  # labels name the examples


def _crop_and_flip_of(original, augmented, pad):
    """(row offset, column offset, flipped) such that augmented is that window of the padded original, or None."""
    padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
    height, width = original.shape[:2]
    for row in range(2 * pad + 1):
        for column in range(2 * pad + 1):
            window = padded[row : row + height, column : column + width]
            for flipped, candidate in ((False, window), (True, window[:, ::-1])):
                if np.array_equal(candidate, augmented):
                    return row, column, flipped
    return None


@pytest.fixture(scope="session")
def crop_and_flip_of():
    """``crop_and_flip_of(original, augmented, pad)``: how ``augmented`` was cut from ``original`` (None: it wasn't)."""
    return _crop_and_flip_of


def _raw(dataset, split):
    """The uint8 pixels a normalised split came from."""
    return np.rint(split.x * dataset.std + dataset.mean).astype(np.uint8)


def _positions(raw, pixels):
    """For each image of ``raw``, its position in ``pixels`` (images are unique)."""
    where = {image.tobytes(): position for position, image in enumerate(pixels)}
    return np.array([where[image.tobytes()] for image in raw])


@pytest.fixture(scope="session")
def raw():
    """``raw(dataset, split)``: the uint8 pixels a normalised split came from."""
    return _raw


@pytest.fixture(scope="session")
def positions():
    """``positions(raw, pixels)``: for each image of ``raw``, its position in ``pixels`` (images are unique)."""
    return _positions


@contextlib.contextmanager
def _mocked_tfds(**options):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, **options), mock.patch.object(
            tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        yield


@pytest.fixture(scope="session")
def mocked_tfds():
    """``with mocked_tfds(**options):`` tfds.testing.mock_data (no tensorflow needed for data sources), with the
    dataset counted as prepared: mock_data fakes reading and preparing but not `is_prepared`, which the loaders ask
    first."""
    return _mocked_tfds
