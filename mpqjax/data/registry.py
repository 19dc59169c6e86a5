"""Loaders by dataset name (`LOADERS`) and `load`, the one entry point the search and the command line use."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from mpqjax.data.cifar import load_cifar10, load_cifar100
from mpqjax.data.dataset import Dataset
from mpqjax.data.digits import load_digits_splits
from mpqjax.data.tfds import load_imagenet2012

__all__ = ["LOADERS", "load"]

LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits_splits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagenet2012": load_imagenet2012,
}
"""Loaders by dataset name; each takes the seed first and keyword options (every one accepts ``data_dir``)."""


def load(name: str, *, seed: int = 0, **options) -> Dataset:
    """Load a registered dataset by name (``"digits"``, ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``).

    Args:
        name: a key of `LOADERS`.
        seed: fixes the splits.
        **options: the loader's keyword options, e.g. ``data_dir``, ``download``, ``validation_size``.

    Returns:
        The loader's `Dataset`.

    Raises:
        ValueError: unknown name (the message lists the available ones) or option.
        FileNotFoundError: the data is absent (the message says what to download and where to put it).

    Example:
        >>> load("digits", seed=0, data_dir=None).num_classes
        10
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(LOADERS)}")
    loader = LOADERS[name]
    try:
        inspect.signature(loader).bind(seed, **options)
    except TypeError as error:
        raise ValueError(f"dataset {name!r}: {error}") from None
    return loader(seed, **options)
