"""scikit-learn's digits (1797 8x8 grey images, 10 classes): embedded, no download, the default dataset."""

from __future__ import annotations

import numpy as np

from mpqjax.data.dataset import Dataset, Split

__all__ = ["load_digits_splits"]


def load_digits_splits(seed: int = 0, *, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                       data_dir: str | None = None) -> Dataset:
    """scikit-learn's digits as 8x8x1 images, split stratified by class into train/validation/test.

    Pixels (0..16) are standardised with the training split's mean and standard deviation.

    Args:
        seed: fixes the split (same seed, same split).
        validation_fraction: share of all examples in the validation split.
        test_fraction: share of all examples in the test split.
        data_dir: ignored (the digits ship with scikit-learn); accepted so every loader takes ``data_dir``.

    Returns:
        The `Dataset` ``"digits"`` (no augmentation).

    Example:
        >>> data = load_digits_splits(0)
        >>> data.train.x.shape[1:], len(data.train) + len(data.validation) + len(data.test)
        ((8, 8, 1), 1797)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    del data_dir
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

    return Dataset("digits", split(train), split(validation), split(test), num_classes=10,
                   mean=np.array([mean], np.float32), std=np.array([std], np.float32), augmentation=None)
