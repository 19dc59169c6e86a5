"""`Split` and `Dataset`, and what every loader shares: a stratified validation split carved from the training
examples and per-channel normalisation with the training split's statistics.

Example:
    >>> rng = np.random.default_rng(0)
    >>> pixels = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    >>> data = dataset_from_pixels("toy", pixels, np.arange(20) % 2, pixels[:6], np.arange(6) % 2,
    ...                            rng=rng, validation_size=4, num_classes=2, augmentation=None)
    >>> [len(data.train), len(data.validation), len(data.test)], data.mean.shape
    ([16, 4, 6], (3,))
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Dataset", "Split", "check_count", "dataset_from_pixels"]

# Pixel values one normalisation or statistics chunk handles at a time (64 MiB as float32).
_CHUNK_VALUES = 1 << 24


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

    def on_device(self) -> Split:
        """The split with its arrays placed on the default device once (`jax.device_put`), so training steps and
        evaluations gather their batches there instead of sending every batch from the host."""
        import jax  # the data package stays NumPy-only until a split is placed

        return Split(jax.device_put(self.x), jax.device_put(self.y))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's fixed splits and what a model needs to know about it.

    Attributes:
        name: the registered name (``"digits"``, ``"cifar10"``, ...).
        train, validation, test: the splits; validation comes from the dataset's training examples.
        num_classes: number of classes (labels are ``0 .. num_classes - 1``).
        mean, std: per-channel statistics (shape ``(C,)``, raw pixel units) of the training split, with which every
            split was normalised: ``x = (pixels - mean) / std``. None for a dataset built by hand.
        augmentation: the augmentation kind that suits the dataset for training (see `augment`), or None.
    """

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    augmentation: str | None = None

    def on_device(self) -> Dataset:
        """The dataset with every split on the default device (`Split.on_device`); a search places its dataset
        there once, for all its trials.

        Example:
            >>> from mpqjax.data import load_digits_splits
            >>> type(load_digits_splits(0).on_device().train.x).__name__
            'ArrayImpl'
        """
        return dataclasses.replace(self, train=self.train.on_device(), validation=self.validation.on_device(),
                                   test=self.test.on_device())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (no batch axis)."""
        return tuple(self.train.x.shape[1:])

    def normalise(self, pixels) -> np.ndarray:
        """Normalise new raw images (N, H, W, C) as the splits were: ``(pixels - mean) / std``, float32.

        Example:
            >>> from mpqjax.data import load_digits_splits
            >>> data = load_digits_splits(0)
            >>> data.normalise(np.full((1, 8, 8, 1), 16)).shape
            (1, 8, 8, 1)
        """
        if self.mean is None or self.std is None:
            raise ValueError(f"dataset {self.name!r} has no normalisation statistics")
        return ((np.asarray(pixels, np.float32) - self.mean) / self.std).astype(np.float32)


def check_count(option: str, value, low: int, high: int | None = None) -> None:
    """Raise a one-line `ValueError` unless ``value`` is an integer (not a bool) in ``[low, high]``.

    The one check of the loaders' counts (``validation_size``, caps, sizes), so they all word it alike.

    Args:
        option: the option's name, for the message.
        value: what was given.
        low: smallest allowed value.
        high: largest allowed value (None: no bound).

    Example:
        >>> check_count("validation_size", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: validation_size must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low or (
            high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{option} must be {bound}, got {value!r}")


def dataset_from_pixels(name: str, train_pixels: np.ndarray, train_labels: np.ndarray, test_pixels: np.ndarray,
                        test_labels: np.ndarray, *, rng: np.random.Generator, validation_size: int, num_classes: int,
                        augmentation: str | None) -> Dataset:
    """A `Dataset` from uint8 images: a stratified validation split held out of the training examples, and every
    split normalised per channel with the statistics of the training examples that remain.

    Args:
        name: the dataset's name.
        train_pixels, train_labels: the training examples, uint8 (N, H, W, C) and integer labels (N,).
        test_pixels, test_labels: the test examples, kept whole and in order.
        rng: draws the validation split (and breaks rounding ties among classes).
        validation_size: training examples held out; each class gives its share, the largest remainders rounding
            up, so a class with one example is allowed.
        num_classes: number of classes.
        augmentation: the `Dataset.augmentation` to record.

    Raises:
        ValueError: ``validation_size`` is not an integer in ``[1, N - 1]``.
    """
    check_count("validation_size", validation_size, 1, len(train_labels) - 1)
    train_index, validation_index = _stratified_holdout(rng, train_labels, validation_size)
    mean, std = _channel_statistics(train_pixels, train_index)
    every_test = np.arange(len(test_labels))
    return Dataset(
        name,
        Split(_normalised(train_pixels, train_index, mean, std), train_labels[train_index].astype(np.int32)),
        Split(_normalised(train_pixels, validation_index, mean, std), train_labels[validation_index].astype(np.int32)),
        Split(_normalised(test_pixels, every_test, mean, std), test_labels.astype(np.int32)),
        num_classes=num_classes, mean=mean, std=std, augmentation=augmentation,
    )


def _stratified_holdout(rng: np.random.Generator, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions ``(kept, held_out)`` with ``size`` held out, each class in proportion to its count.

    Largest remainders (exact integer arithmetic) decide the rounding, ties broken at random, so a class with a
    single example is allowed (unlike scikit-learn's stratified split).
    """
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota, remainder = np.divmod(counts * size, len(labels))
    order = np.lexsort((rng.random(len(classes)), -remainder))
    quota[order[: size - quota.sum()]] += 1
    held_out = np.zeros(len(labels), bool)
    for index, take in enumerate(quota):
        members = np.flatnonzero(inverse == index)
        held_out[rng.permutation(members)[:take]] = True
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def _channel_statistics(pixels: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float32) of uint8 ``pixels[index]``.

    Exact, from per-channel histograms of the 256 values, which is cheaper than float64 sums of squares.
    """
    channels = pixels.shape[-1]
    step = max(1, _CHUNK_VALUES // int(np.prod(pixels.shape[1:])))
    counts = np.zeros((channels, 256), np.int64)
    for start in range(0, len(index), step):
        chunk = pixels[index[start : start + step]]
        for channel in range(channels):
            counts[channel] += np.bincount(chunk[..., channel].ravel(), minlength=256)
    values = np.arange(256.0)
    total = counts.sum(axis=1)
    mean = counts @ values / total
    std = np.sqrt(np.maximum(counts @ values**2 / total - mean**2, 0.0))
    # A constant channel carries no information; dividing by 1 keeps it finite (zero after centring).
    std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _normalised(pixels: np.ndarray, index: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(pixels[index] - mean) / std`` as float32, in chunks written in place (no float64 copy of the split)."""
    out = np.empty((len(index), *pixels.shape[1:]), np.float32)
    step = max(1, _CHUNK_VALUES // int(np.prod(pixels.shape[1:])))
    inverse_std = (1.0 / std).astype(np.float32)
    for start in range(0, len(index), step):
        chunk = out[start : start + step]
        np.subtract(pixels[index[start : start + step]], mean, out=chunk, dtype=np.float32)
        chunk *= inverse_std
    return out
