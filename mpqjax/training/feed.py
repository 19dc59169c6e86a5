"""A training run's batches, gathered on the device: the examples stay there and each step picks its own.

`plan` lays out every step of a run once, on the host: which examples each step takes (a permutation per epoch, the
last incomplete batch dropped), its one-cycle learning rate and its augmentation key. The training step then
gathers its batch from the examples already on the device and augments it there (`batch`, traced inside the
compiled step), so a run sends nothing but a step number per step and the host never waits for the device: the
whole run is dispatched ahead. The batches are those of `mpqjax.data.batches` with the same epoch keys, in the same
order.

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

__all__ = ["Feed", "batch", "one_cycle", "plan", "resident"]


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
    orders, keys = _epochs(key, count, epochs, per_epoch * batch_size, per_epoch, augmentation is not None)
    total = epochs * per_epoch
    rates = np.array([one_cycle(step, total, learning_rate) for step in range(total)], np.float32)
    keys = jax.random.key_data(keys)
    return Feed(split.x, split.y, orders.reshape(total, batch_size), jax.device_put(rates),
                keys.reshape(total, *keys.shape[2:]))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _epochs(key, count: int, epochs: int, used: int, per_epoch: int, augmented: bool):
    """Every epoch's order ``[epochs, used]`` int32 and step keys ``[epochs, per_epoch]``, split from ``key`` as
    `mpqjax.data.batches` splits them: one key per epoch, split again into order and augmentation for an augmented
    epoch, step ``j``'s augmentation ``fold_in(augmentation key, j)``."""
    epoch_keys = jax.random.split(key, epochs)
    if augmented:
        order_keys, augment_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(epoch_keys)
    else:
        order_keys = augment_keys = epoch_keys
    orders = jax.vmap(lambda k: jax.random.permutation(k, count)[:used])(order_keys).astype(jax.numpy.int32)
    steps = jax.numpy.arange(per_epoch)
    keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(steps))(augment_keys)
    return orders, keys


def batch(feed: Feed, step, augmentation: str | None):
    """Step ``step``'s batch and learning rate ``(x, y, rate)``, gathered (and augmented) where ``feed`` lies.

    Traceable: a compiled training step calls it with a traced step number. ``augmentation`` is the dataset's kind
    (`mpqjax.data.AUGMENTATIONS`, or None), a structural switch of the step.
    """
    check_augmentation(augmentation)
    order = feed.orders[step]
    x = augment(jax.random.wrap_key_data(feed.keys[step]), feed.x[order], augmentation)
    return x, feed.y[order], feed.rates[step]
