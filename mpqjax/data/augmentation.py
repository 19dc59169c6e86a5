"""Random augmentation of image batches (CIFAR's pad-crop-flip, or a flip), drawn from a JAX PRNG key.

`augment` is a pure JAX function of the key and the batch: the training step calls it on the device, inside its
compiled program, on the batch it gathered there (`mpqjax.training.feed`), and `batches` calls it on the host.

Example:
    >>> x = np.zeros((2, 32, 32, 3), np.float32)
    >>> augment(jax.random.key(0), x, "cifar").shape
    (2, 32, 32, 3)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["AUGMENTATIONS", "augment", "augmenter", "check_augmentation"]

AUGMENTATIONS = ("cifar", "flip")
"""Augmentation kinds `augment` knows: ``"cifar"`` (pad 4, random crop, random flip) and ``"flip"`` (random flip)."""

_CIFAR_PAD = 4


def augment(key, x, kind: str | None):
    """Randomly augmented copies of a batch of images ``x`` (N, H, W, C); a pure, traceable function of ``key``.

    Kinds:
        ``"cifar"``: the standard CIFAR augmentation: pad 4 zero pixels on each side (zero is the training mean
        colour, the images being normalised), cut a random H x W window, flip it horizontally with probability 1/2.
        ``"flip"``: flip horizontally with probability 1/2.
        None: ``x`` unchanged (returned as is).

    Args:
        key: PRNG key; the same key gives the same augmentation.
        x: the batch (NumPy or JAX array; traced inside a compiled step).
        kind: one of `AUGMENTATIONS`, or None.

    Returns:
        The augmented batch, a JAX array of ``x``'s shape and dtype (``x`` itself when ``kind`` is None).

    Raises:
        ValueError: unknown ``kind``, or ``x`` is not a batch of images.

    Example:
        >>> x = np.arange(2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
        >>> augment(jax.random.key(0), x, "cifar").shape
        (2, 32, 32, 3)
    """
    check_augmentation(kind)
    if kind is None:
        return x
    if x.ndim != 4:
        raise ValueError(f"augment needs a batch of images (N, H, W, C), got shape {x.shape}")
    return _augmented(key, jnp.asarray(x), kind)


def augmenter(key, kind: str | None) -> Callable:
    """A function that augments successive batches (N, H, W, C): batch ``n`` with ``jax.random.fold_in(key, n)``.

    `batches` uses it for an epoch: one key, a different augmentation for every batch, the same epoch for the same
    key.

    Args:
        key: PRNG key (may be None only when ``kind`` is None).
        kind: one of `AUGMENTATIONS`, or None (the function then returns its batch unchanged).

    Returns:
        ``apply(x)``: the next augmented copy of the batch ``x`` (a JAX array).

    Raises:
        ValueError: unknown ``kind``; ``key`` is None while ``kind`` is not.

    Example:
        >>> apply = augmenter(jax.random.key(0), "flip")
        >>> first, second = apply(np.ones((4, 8, 8, 1))), apply(np.ones((4, 8, 8, 1)))
    """
    check_augmentation(kind)
    if kind is None:
        return lambda x: x
    if key is None:
        raise ValueError(f"augmentation {kind!r} needs a PRNG key, got None")
    count = [0]

    def apply(x):
        batch_key = jax.random.fold_in(key, count[0])
        count[0] += 1
        return augment(batch_key, x, kind)

    return apply


def check_augmentation(kind: str | None) -> None:
    """Raise ValueError unless ``kind`` is one of `AUGMENTATIONS` or None."""
    if kind is not None and kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; available: {', '.join(AUGMENTATIONS)} (or None)")


@functools.partial(jax.jit, static_argnums=2)
def _augmented(key, x, kind: str):
    count, height, width, channels = x.shape
    flip_key, offset_key = jax.random.split(key)
    flips = jax.random.bernoulli(flip_key, 0.5, (count,))
    if kind == "cifar":
        pad = _CIFAR_PAD
        offsets = jax.random.randint(offset_key, (count, 2), 0, 2 * pad + 1)
        padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        x = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
            image, (offset[0], offset[1], 0), (height, width, channels)))(padded, offsets)
    return jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)
