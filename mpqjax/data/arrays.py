"""`from_arrays`: a `Dataset` from a user's own NumPy (or JAX) arrays, checked, with a stratified validation split
carved from the training examples unless one is given.

Example:
    >>> rng = np.random.default_rng(0)
    >>> train = rng.normal(size=(40, 5)), np.arange(40) % 4
    >>> test = rng.normal(size=(8, 5)), np.arange(8) % 4
    >>> data = from_arrays(train=train, test=test, validation_size=8)
    >>> [len(data.train), len(data.validation), len(data.test)], data.input_shape, data.num_classes
    ([32, 8, 8], (5,), 4)
"""

from __future__ import annotations

import numbers

import numpy as np

from mpqjax.data.augmentation import AUGMENTATIONS
from mpqjax.data.dataset import Dataset, Split, _stratified_holdout, check_count

__all__ = ["from_arrays"]

# Share of the training examples held out for validation when neither validation nor validation_size is given.
_DEFAULT_VALIDATION_FRACTION = 0.1
# Values one statistics chunk handles at a time (128 MiB as float64).
_CHUNK_VALUES = 1 << 24


def from_arrays(*, train, test, validation=None, validation_size: int | float | None = None,
                num_classes: int | None = None, name: str = "arrays", normalise: bool = False,
                augmentation: str | None = None, seed: int = 0) -> Dataset:
    """A `Dataset` from ``(x, y)`` arrays: examples ``x`` (N, ...) of any shape and integer labels ``y`` (N,).

    Examples become float32 (C-contiguous) and labels int32. Without ``validation``, a validation split is held out
    of ``train``, each class in proportion to its count (fixed by ``seed``); ``test`` (and a given ``validation``)
    are kept whole and in order.

    Args:
        train, test: ``(x, y)`` pairs; ``x`` anything `np.asarray` accepts (images NHWC, flat features (N, F), ...),
            ``y`` integer labels ``0 .. num_classes - 1`` (integral floats are accepted; one-hot labels are not).
        validation: an ``(x, y)`` pair, or None to carve the validation split from ``train``.
        validation_size: examples held out of ``train``: an int count or a float fraction in (0, 1). None: 10% of
            ``train``, raised to one per class that has two or more examples (so small balanced data validates
            every class).
        num_classes: number of classes; None: the largest label over all splits plus one.
        name: the `Dataset`'s name.
        normalise: standardise every split with the per-channel (last axis) mean and standard deviation of the
            training examples that remain, kept as ``mean``/``std`` (a constant channel is centred, not divided);
            False: values unchanged, ``mean``/``std`` None.
        augmentation: one of `AUGMENTATIONS` (needs images (N, H, W, C)) or None, recorded for training.
        seed: fixes the validation split.

    Returns:
        The `Dataset`.

    Raises:
        ValueError: a split that is not an ``(x, y)`` pair, is empty, has not one label per example, has labels
            that are not 1-D integers in ``[0, num_classes)``, has non-finite values or an example shape unlike
            ``train``'s; a bad ``validation_size``, ``num_classes`` or ``augmentation``.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> from sklearn.model_selection import train_test_split
        >>> x, y = load_digits(return_X_y=True)
        >>> x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
        >>> data = from_arrays(train=(x_train, y_train), test=(x_test, y_test), normalise=True)
        >>> data.input_shape, [len(data.train), len(data.validation), len(data.test)], data.num_classes
        ((64,), [1293, 144, 360], 10)
    """
    if validation is not None and validation_size is not None:
        raise ValueError("give validation or validation_size, not both")
    splits = {"train": _checked_pair("train", train), "test": _checked_pair("test", test)}
    if validation is not None:
        splits["validation"] = _checked_pair("validation", validation)
    example_shape = splits["train"][0].shape[1:]
    for split_name, (x, _) in splits.items():
        if x.shape[1:] != example_shape:
            raise ValueError(f"{split_name}: examples have shape {x.shape[1:]} but train's have {example_shape}")
    num_classes = _checked_num_classes(splits, num_classes)
    _check_augmentation(augmentation, example_shape)
    if validation is None:
        train_x, train_y = splits["train"]
        count = _validation_count(validation_size, train_y)
        kept, held_out = _stratified_holdout(np.random.default_rng(seed), train_y, count)
        splits["train"], splits["validation"] = (train_x[kept], train_y[kept]), (train_x[held_out], train_y[held_out])
    mean = std = None
    if normalise:
        mean, std = _channel_statistics(splits["train"][0])
    data = {split_name: _split(x, y, mean, std) for split_name, (x, y) in splits.items()}
    return Dataset(name, data["train"], data["validation"], data["test"], num_classes=num_classes, mean=mean,
                   std=std, augmentation=augmentation)


def _checked_pair(split_name: str, pair) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32, y int64)`` of one split's ``(x, y)``, or a one-line `ValueError` naming the split."""
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ValueError(f"{split_name} must be an (x, y) pair, got {type(pair).__name__}"
                         + (f" of length {len(pair)}" if isinstance(pair, tuple | list) else ""))
    x, y = (_as_array(split_name, part, value) for part, value in zip("xy", pair, strict=True))
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{split_name}: x must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{split_name}: x must have shape (N, ...) with at least one feature axis, got {x.shape}")
    if y.ndim != 1:
        hint = {1: " (a column: pass y.ravel())"}.get(y.shape[1], " (one-hot labels: pass y.argmax(axis=1))") if (
            y.ndim == 2) else ""
        raise ValueError(f"{split_name}: y must be 1-D integer labels (N,), got shape {y.shape}{hint}")
    if len(x) != len(y):
        raise ValueError(f"{split_name}: x has {len(x)} examples but y has {len(y)} labels")
    if len(y) == 0:
        raise ValueError(f"{split_name} is empty")
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.array(x, dtype=np.float32, order="C")  # a copy: later edits of the caller's array don't reach it
    bad = np.size(x) - np.count_nonzero(np.isfinite(x))
    if bad:
        raise ValueError(f"{split_name}: x has {bad} non-finite values (NaN, inf, or beyond float32)")
    return x, _integer_labels(split_name, y)


def _as_array(split_name: str, part: str, value) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{split_name}: {part} is not an array ({str(error).splitlines()[0]})") from None


def _integer_labels(split_name: str, y: np.ndarray) -> np.ndarray:
    """``y`` as int64, integral floats allowed; raises naming a non-integral label."""
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise ValueError(f"{split_name}: y must hold integer labels, got dtype {y.dtype}")
    integral = np.isfinite(y) & (y == np.round(y))
    if not integral.all():
        raise ValueError(f"{split_name}: y must hold integer labels, got {y[~integral][0]}")
    return y.astype(np.int64)


def _checked_num_classes(splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int | None) -> int:
    """``num_classes`` (default: the largest label plus one), every split's labels checked against it."""
    for split_name, (_, y) in splits.items():
        if y.min() < 0:
            raise ValueError(f"{split_name}: y has a negative label {y.min()}")
    if num_classes is None:
        return int(max(y.max() for _, y in splits.values())) + 1
    check_count("num_classes", num_classes, 1)
    for split_name, (_, y) in splits.items():
        if y.max() >= num_classes:
            raise ValueError(f"{split_name}: y has label {y.max()}, but num_classes is {num_classes} "
                             f"(labels must be in [0, {num_classes - 1}])")
    return int(num_classes)


def _check_augmentation(augmentation: str | None, example_shape: tuple[int, ...]) -> None:
    if augmentation is None:
        return
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; available: {', '.join(AUGMENTATIONS)} (or None)")
    if len(example_shape) != 3:
        raise ValueError(f"augmentation {augmentation!r} needs images (N, H, W, C), got examples of shape "
                         f"{example_shape}")


def _validation_count(validation_size: int | float | None, train_labels: np.ndarray) -> int:
    """Training examples to hold out: ``validation_size`` as a count, or the default, checked to leave some."""
    total = len(train_labels)
    if validation_size is None:
        if total < 2:
            raise ValueError("train: a single example leaves none to hold out for validation (give validation)")
        classes_with_two = int(np.count_nonzero(np.bincount(train_labels) >= 2))
        return max(round(_DEFAULT_VALIDATION_FRACTION * total), classes_with_two, 1)
    if isinstance(validation_size, bool) or not isinstance(validation_size, numbers.Real):
        raise ValueError(f"validation_size must be an int count or a float fraction, got {validation_size!r}")
    if isinstance(validation_size, numbers.Integral):
        count = int(validation_size)
        if count < 1:
            raise ValueError(f"validation_size must be positive, got {count}")
    else:
        if not 0 < validation_size < 1:
            raise ValueError(f"validation_size as a fraction must be in (0, 1), got {validation_size}")
        count = max(1, round(validation_size * total))
    if count >= total:
        raise ValueError(f"validation_size {validation_size} leaves no training examples: train has {total}")
    return count


def _channel_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last axis) mean and standard deviation of ``x`` as float32; a constant channel gets std 1."""
    flat = x.reshape(-1, x.shape[-1])
    constant = flat.min(axis=0) == flat.max(axis=0)
    mean = np.where(constant, flat[0], flat.mean(axis=0, dtype=np.float64))
    step = max(1, _CHUNK_VALUES // flat.shape[1])
    squares = sum(np.square(flat[start : start + step] - mean).sum(axis=0) for start in range(0, len(flat), step))
    std = np.where(constant, 1.0, np.sqrt(squares / len(flat)))
    return mean.astype(np.float32), std.astype(np.float32)


def _split(x: np.ndarray, y: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> Split:
    if mean is not None:
        x = (x - mean) / std
    return Split(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int32))
