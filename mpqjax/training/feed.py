"""A training run's batches, gathered on the device: the examples stay there and each step picks its own.

`plan` lays out every step of a run once, on the host: which examples each step takes (a permutation per epoch, the
last incomplete batch dropped), its one-cycle learning rate and its augmentation key. The training step then
gathers its batch from the examples already on the device and augments it there (`batch`, traced inside the
compiled step, at the step number its state carries), so a run sends nothing to the device step after step and the
host never waits for it: the whole run is dispatched ahead. The batches are those of `mpqjax.data.batches` with the
same epoch keys, in the same order. `scaled_learning_rate` says how a learning rate follows the batch size.

Example:
    >>> feed = plan(jax.random.key(0), dataset, epochs=4, batch_size=64, learning_rate=1e-3)
    >>> x, y, rate = batch(feed, 0, dataset.augmentation)       # inside a compiled step
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np

from mpqjax.data import Dataset, Split, augment, check_augmentation

__all__ = ["LEARNING_RATE_SCALINGS", "REFERENCE_BATCH_SIZE", "Feed", "batch", "one_cycle", "plan", "resident",
           "scaled_learning_rate"]


class Feed(NamedTuple):
    """Every step of a training run, on the device (a pytree: it is an argument of the compiled step).

    Attributes:
        x, y: the training examples and labels, ``[N, ...]`` and ``[N]``.
        orders: ``[steps, batch_size]`` int32: the examples each step takes.
        rates: ``[steps]`` float32: each step's learning rate.
        keys: ``[steps, ...]`` uint32: each step's augmentation key, as `jax.random.key_data` (plain arrays travel
            to every device and process as any other).
    """

    x: jax.Array
    y: jax.Array
    orders: jax.Array
    rates: jax.Array
    keys: jax.Array

    @property
    def steps(self) -> int:
        """Steps of the run."""
        return int(self.rates.shape[0])


def one_cycle(step: int, total_steps: int, peak: float, *, warmup_fraction: float = 0.3) -> float:
    """One-cycle learning rate at ``step``: cosine warm-up from peak/25 to peak, then cosine decay to peak/1e4."""
    warmup = max(1, int(total_steps * warmup_fraction))
    if step < warmup:
        return float(peak / 25 + (peak - peak / 25) * (1 - np.cos(np.pi * step / warmup)) / 2)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return float(peak / 1e4 + (peak - peak / 1e4) * (1 + np.cos(np.pi * progress)) / 2)


LEARNING_RATE_SCALINGS = ("none", "linear", "sqrt")
"""How a learning rate follows the batch size (`scaled_learning_rate`)."""
REFERENCE_BATCH_SIZE = 64
"""The batch size at which the settings' learning rates are given (the default batch size)."""


def scaled_learning_rate(learning_rate: float, batch_size: int, scaling: str = "none") -> float:
    """``learning_rate`` (set for batches of `REFERENCE_BATCH_SIZE`) for batches of ``batch_size``.

    ``"none"`` keeps it; ``"linear"`` multiplies it by ``batch_size / 64`` (Goyal et al.'s rule for SGD);
    ``"sqrt"`` by the square root of that (the rule that keeps Adam's update noise).

    Raises:
        ValueError: an unknown ``scaling``.

    Example:
        >>> scaled_learning_rate(1e-3, 256, "linear"), scaled_learning_rate(1e-3, 256, "sqrt")
        (0.004, 0.002)
    """
    if scaling not in LEARNING_RATE_SCALINGS:
        raise ValueError(f"learning-rate scaling must be one of {', '.join(LEARNING_RATE_SCALINGS)}, got {scaling!r}")
    ratio = batch_size / REFERENCE_BATCH_SIZE
    return float(learning_rate * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[scaling])


def resident(split: Split) -> Split:
    """``split`` with its arrays on the device: as it is when they already are (`Split.on_device`), else placed."""
    if isinstance(split.x, jax.Array) and isinstance(split.y, jax.Array):
        return split
    return split.on_device()


def plan(key, data: Dataset | Split, *, epochs: int, batch_size: int, learning_rate: float) -> Feed:
    """Every step of a training run: shuffles and augmentation keys from ``key``, one-cycle rates with peak
    ``learning_rate``.

    Args:
        key: PRNG key of the run (split into one key per epoch, as `mpqjax.data.batches` takes).
        data: a `Dataset` (its train split, augmented as its ``augmentation`` says) or a `Split` (not augmented).
        epochs: passes over the examples.
        batch_size: examples per step (the last incomplete batch of an epoch is dropped).
        learning_rate: peak of the one-cycle schedule.

    Returns:
        A `Feed` whose examples are on the device (`resident`).

    Raises:
        ValueError: ``batch_size`` below 1 or above the split's size, or ``epochs`` below 1.
    """
    split = resident(data.train if isinstance(data, Dataset) else data)
    augmentation = data.augmentation if isinstance(data, Dataset) else None
    count = len(split)
    if batch_size < 1 or batch_size > count:
        raise ValueError(f"batch_size must be in [1, {count}] (the training examples), got {batch_size}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    per_epoch = count // batch_size
    epochs_laid_out = [_epoch(epoch_key, count, per_epoch * batch_size, per_epoch, augmentation is not None)
                       for epoch_key in jax.random.split(key, epochs)]
    total = epochs * per_epoch
    rates = np.array([one_cycle(step, total, learning_rate) for step in range(total)], np.float32)
    # joined on the host: a few kilobytes, and no program compiled per number of epochs
    orders = np.concatenate([np.asarray(order) for order, _ in epochs_laid_out]).reshape(total, batch_size)
    keys = np.concatenate([np.asarray(jax.random.key_data(step_keys)) for _, step_keys in epochs_laid_out])
    return Feed(split.x, split.y, *jax.device_put((orders, rates, keys)))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _epoch(key, count: int, used: int, per_epoch: int, augmented: bool):
    """One epoch's order (its first ``used`` examples, int32) and step keys ``[per_epoch]``, split from its key as
    `mpqjax.data.batches` splits it: an augmented epoch's key gives an order key and an augmentation key, step ``j``
    augments with ``fold_in(augmentation key, j)``. Compiled once per dataset size and batch size, whatever the
    epochs of a run."""
    order_key, augment_key = jax.random.split(key) if augmented else (key, key)
    order = jax.random.permutation(order_key, count)[:used].astype(jax.numpy.int32)
    return order, jax.vmap(lambda step: jax.random.fold_in(augment_key, step))(jax.numpy.arange(per_epoch))


def batch(feed: Feed, step, augmentation: str | None):
    """Step ``step``'s batch and learning rate ``(x, y, rate)``, gathered (and augmented) where ``feed`` lies.

    Traceable: a compiled training step calls it with a traced step number. ``augmentation`` is the dataset's kind
    (`mpqjax.data.AUGMENTATIONS`, or None), a structural switch of the step.
    """
    check_augmentation(augmentation)
    order = feed.orders[step]
    x = augment(jax.random.wrap_key_data(feed.keys[step]), feed.x[order], augmentation)
    return x, feed.y[order], feed.rates[step]
