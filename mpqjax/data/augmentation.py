"""Random augmentation of image batches (CIFAR's pad-crop-flip, or a flip), drawn from a JAX PRNG key.

The draws are NumPy's, seeded by the key: no compilation per batch shape, and the same key gives the same images.

Example:
    >>> x = np.zeros((2, 32, 32, 3), np.float32)
    >>> augment(jax.random.key(0), x, "cifar").shape
    (2, 32, 32, 3)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

__all__ = ["AUGMENTATIONS", "augment", "augmenter"]

AUGMENTATIONS = ("cifar", "flip")
"""Augmentation kinds `augment` knows: ``"cifar"`` (pad 4, random crop, random flip) and ``"flip"`` (random flip)."""


def augment(key, x, kind: str | None) -> np.ndarray:
    """Randomly augmented copies of a batch of images ``x`` (N, H, W, C); a pure function of ``key``.

    Kinds:
        ``"cifar"``: the standard CIFAR augmentation: pad 4 zero pixels on each side (zero is the training mean
        colour, the images being normalised), cut a random H x W window, flip it horizontally with probability 1/2.
        ``"flip"``: flip horizontally with probability 1/2.
        None: ``x`` unchanged (returned as is).

    Args:
        key: PRNG key; the same key gives the same augmentation.
        x: the batch (NumPy or JAX array).
        kind: one of `AUGMENTATIONS`, or None.

    Returns:
        The augmented batch, a new NumPy array of ``x``'s shape and dtype (``x`` itself when ``kind`` is None).

    Raises:
        ValueError: unknown ``kind``, or ``x`` is not a batch of images.

    Example:
        >>> x = np.arange(2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
        >>> augment(jax.random.key(0), x, "cifar").shape
        (2, 32, 32, 3)
    """
    _check_augmentation(kind)
    if kind is None:
        return x
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"augment needs a batch of images (N, H, W, C), got shape {x.shape}")
    return _augmented(_generator(key), x, kind)


def augmenter(key, kind: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """A function that augments successive batches (N, H, W, C) with draws from one stream seeded by ``key``.

    `batches` uses it for an epoch: one key, a different augmentation for every batch, the same epoch for the same
    key. ``augmenter(key, kind)(x)`` equals ``augment(key, x, kind)`` for the first batch.

    Args:
        key: PRNG key (may be None only when ``kind`` is None).
        kind: one of `AUGMENTATIONS`, or None (the function then returns its batch unchanged).

    Returns:
        ``apply(x)``: the next augmented copy of the NumPy batch ``x``.

    Raises:
        ValueError: unknown ``kind``; ``key`` is None while ``kind`` is not.

    Example:
        >>> apply = augmenter(jax.random.key(0), "flip")
        >>> first, second = apply(np.ones((4, 8, 8, 1))), apply(np.ones((4, 8, 8, 1)))
    """
    _check_augmentation(kind)
    if kind is None:
        return lambda x: x
    if key is None:
        raise ValueError(f"augmentation {kind!r} needs a PRNG key, got None")
    rng = _generator(key)

    def apply(x: np.ndarray) -> np.ndarray:
        return _augmented(rng, x, kind)

    return apply


def _check_augmentation(kind: str | None) -> None:
    if kind is not None and kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; available: {', '.join(AUGMENTATIONS)} (or None)")


def _generator(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX PRNG key (typed or raw): NumPy draws need no compilation per batch shape."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).ravel().tolist())


def _augmented(rng: np.random.Generator, x: np.ndarray, kind: str) -> np.ndarray:
    count, height, width = x.shape[:3]
    flips = rng.random(count) < 0.5
    pad = 4 if kind == "cifar" else 0
    offsets = rng.integers(0, 2 * pad + 1, (count, 2))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    out = np.empty_like(x)
    # A loop of slice copies: about 2x faster than one fancy-indexed gather on 128x32x32x3 batches.
    for index, ((row, column), flip) in enumerate(zip(offsets, flips, strict=True)):
        window = padded[index, row : row + height, column : column + width]
        out[index] = window[:, ::-1] if flip else window
    return out
