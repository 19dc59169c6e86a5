"""Datasets as fixed, normalised NumPy splits, and batching.

Every loader returns a `Dataset`: train/validation/test `Split`s of NHWC float32 images and int32 labels. The
embedded default is scikit-learn's digits (1797 8x8 grey images, 10 classes, no download). Loaders are registered by
name in `LOADERS`; tensorflow-datasets loaders (CIFAR-10/100, ImageNet) plug in there with the same return type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """Examples ``x`` (N, H, W, C) float32 and labels ``y`` (N,) int32."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"a split needs as many labels as examples, got {len(self.x)} and {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's fixed splits and what a model needs to know about it."""

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (no batch axis)."""
        return tuple(self.train.x.shape[1:])


def load_digits_splits(seed: int = 0, *, validation_fraction: float = 0.1, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's digits as 8x8x1 images, split stratified by class into train/validation/test.

    Pixels (0..16) are standardised with the training split's mean and standard deviation.

    Args:
        seed: fixes the split (same seed, same split).
        validation_fraction: share of all examples in the validation split.
        test_fraction: share of all examples in the test split.

    Example:
        >>> data = load_digits_splits(0)
        >>> data.train.x.shape[1:], len(data.train) + len(data.validation) + len(data.test)
        ((8, 8, 1), 1797)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    indices = np.arange(len(labels))
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    train, validation = train_test_split(
        rest, test_size=validation_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
    )
    mean = images[train].mean()
    std = images[train].std()

    def split(index):
        return Split(((images[index] - mean) / std).astype(np.float32), labels[index])

    return Dataset("digits", split(train), split(validation), split(test), num_classes=10)


LOADERS: dict[str, Callable[..., Dataset]] = {"digits": load_digits_splits}


def load(name: str, *, seed: int = 0, **options) -> Dataset:
    """Load a registered dataset by name (``"digits"``).

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(LOADERS)}")
    return LOADERS[name](seed, **options)


def batches(key, split: Split, batch_size: int, *, shuffle: bool = True,
            drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(x, y)`` batches, shuffled by ``key``.

    Args:
        key: PRNG key for the shuffle (unused when ``shuffle`` is False; may be None then).
        split: the examples.
        batch_size: examples per batch.
        shuffle: visit examples in a random order.
        drop_remainder: skip the last, smaller batch, so every batch has one shape (one compilation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    count = len(split)
    order = np.asarray(jax.random.permutation(key, count)) if shuffle else np.arange(count)
    stop = count - count % batch_size if drop_remainder else count
    if drop_remainder and stop == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {count} examples of the split")
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield split.x[index], split.y[index]
