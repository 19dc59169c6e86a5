"""Datasets as fixed, normalised NumPy splits; augmentation and batching.

Every loader returns a `Dataset`: train/validation/test `Split`s of NHWC float32 images (normalised with the training
split's per-channel mean and standard deviation, kept on the `Dataset` as ``mean``/``std`` in raw pixel units) and
int32 labels. The validation split is always carved from the dataset's training examples (stratified by class, fixed
by ``seed``), never from its test examples. Loaders are registered by name in `LOADERS`:

- ``digits``: scikit-learn's digits (1797 8x8 grey images, 10 classes), embedded, the default (`digits`).
- ``cifar10``, ``cifar100`` (fine labels): 32x32 colour images from a local folder, tensorflow-datasets or a
  download, in that order (`cifar`).
- ``imagenet2012``: a seeded random subset decoded at ``image_size`` (224 by default), from tensorflow-datasets
  (`tfds`, whose `load_tfds` reads any tfds image-classification dataset the same way).

Modules: `dataset` (`Split`, `Dataset`, the shared splitting and normalisation), `digits`, `cifar`, `tfds`,
`registry` (`LOADERS`, `load`), `arrays` (`from_arrays`: a `Dataset` from your own arrays), `augmentation`
(`augment`), `batching` (`batches`). Every name is re-exported here; importing this package imports none of them,
nor tensorflow-datasets, until a name is used.

Example:
    >>> data = load("digits", seed=0)
    >>> x, y = next(batches(jax.random.key(0), data.train, 32, augment=data.augmentation))
    >>> x.shape, y.shape
    ((32, 8, 8, 1), (32,))
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["arrays", "augmentation", "batching", "cifar", "dataset", "digits", "registry", "tfds"],
    names={
        "from_arrays": "arrays",
        "AUGMENTATIONS": "augmentation", "augment": "augmentation", "augmenter": "augmentation",
        "check_augmentation": "augmentation",
        "batches": "batching",
        "CIFAR_ARCHIVES": "cifar", "CifarArchive": "cifar", "load_cifar10": "cifar", "load_cifar100": "cifar",
        "load_cifar_folder": "cifar",
        "Dataset": "dataset", "Split": "dataset", "check_count": "dataset", "dataset_from_pixels": "dataset",
        "load_digits_splits": "digits",
        "LOADERS": "registry", "load": "registry",
        "default_data_dir": "tfds", "load_imagenet2012": "tfds", "load_tfds": "tfds", "tfds_is_prepared": "tfds",
    },
)
