"""One epoch of a split as ``(x, y)`` NumPy batches, shuffled and augmented as a PRNG key says.

Example:
    >>> from mpqjax.data import load_digits_splits
    >>> data = load_digits_splits(0)
    >>> [x.shape for x, _ in batches(jax.random.key(0), data.validation, 64)]
    [(64, 8, 8, 1), (64, 8, 8, 1)]
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from mpqjax.data.augmentation import augmenter
from mpqjax.data.dataset import Split

__all__ = ["batches"]


def batches(key, split: Split, batch_size: int, *, shuffle: bool = True, drop_remainder: bool = True,
            augment: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(x, y)`` batches, shuffled and augmented as ``key`` says.

    Args:
        key: PRNG key for the shuffle and the augmentation (unused when ``shuffle`` is False and ``augment`` is
            None; may be None then).
        split: the examples.
        batch_size: examples per batch.
        shuffle: visit examples in a random order.
        drop_remainder: skip the last, smaller batch, so every batch has one shape (one compilation).
        augment: augmentation kind applied to every batch (see `augment`; e.g. ``dataset.augmentation``), or None.

    Yields:
        ``(x, y)``: NumPy arrays of ``batch_size`` examples (fewer in the last batch when ``drop_remainder`` is
        False).

    Raises:
        ValueError: ``batch_size`` below 1 or (with ``drop_remainder``) above the split's size; unknown
            augmentation; an augmentation without a key. Raised on the first ``next``.

    Example:
        >>> data = load_digits_splits(0)
        >>> [x.shape for x, _ in batches(jax.random.key(0), data.validation, 64)]
        [(64, 8, 8, 1), (64, 8, 8, 1)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    augment_key = None
    if augment is not None and key is not None:
        key, augment_key = jax.random.split(key)
    augment_batch = augmenter(augment_key, augment)
    count = len(split)
    order = np.asarray(jax.random.permutation(key, count)) if shuffle else np.arange(count)
    stop = count - count % batch_size if drop_remainder else count
    if drop_remainder and stop == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {count} examples of the split")
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield np.asarray(augment_batch(split.x[index])), np.asarray(split.y[index])
